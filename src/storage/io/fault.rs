//! An in-memory file system that can lose power.
//!
//! Every file (inode) keeps two images: `live`, what reads see now, and `durable`, what survives a
//! crash. `sync_data` copies live to durable. Directory entries work the same way: creations,
//! renames and removals become durable only when the parent directory is synced, as on ext4/xfs.
//!
//! [`FaultVfs::crash`] replaces the live state with the durable one. With
//! [`CrashMode::TornWrites`], some 512-byte sectors of each file's unsynced tail survive anyway,
//! in any combination: a torn write, possibly with holes, exactly what a power cut can leave.
//!
//! Faults can be armed: EIO on the next `fsync`s (after which, as on Linux, the failed pages are
//! marked clean and a later fsync will not write them), ENOSPC once a write budget is spent, and
//! "power loss after N operations", after which every call fails until `crash` is called.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use super::{OpenMode, VFile, Vfs};

/// Sector size for torn writes: a disk persists whole sectors or nothing of each.
pub const SECTOR_BYTES: usize = 512;

/// What a crash keeps of data that was written but not synced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashMode {
    /// Every unsynced byte and directory change is lost.
    DropUnsynced,
    /// Unsynced sectors survive at random (seeded by the file system's seed): a torn tail,
    /// sometimes with holes. Unsynced directory changes are lost.
    TornWrites,
}

/// A clonable handle to one simulated file system.
#[derive(Clone)]
pub struct FaultVfs {
    state: Arc<Mutex<FsState>>,
}

struct Inode {
    live: Vec<u8>,
    durable: Vec<u8>,
    /// First byte changed since the last successful sync; `None` when clean.
    dirty_from: Option<usize>,
}

#[derive(Default)]
struct Faults {
    /// Fail this many upcoming `sync_data` calls with EIO.
    syncs_to_fail: u32,
    /// Bytes that may still be written before writes fail with ENOSPC.
    write_budget_bytes: Option<u64>,
    /// Mutating operations left before simulated power loss.
    ops_before_power_loss: Option<u64>,
    powered_off: bool,
}

struct FsState {
    live: BTreeMap<PathBuf, u64>,
    durable: BTreeMap<PathBuf, u64>,
    dirs: BTreeSet<PathBuf>,
    inodes: HashMap<u64, Inode>,
    next_inode: u64,
    /// Bumped by every crash; handles opened before it stop working.
    epoch: u64,
    faults: Faults,
    rng: fastrand::Rng,
    crashes: u64,
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file", path.display()),
    )
}

fn power_loss() -> io::Error {
    io::Error::other("simulated power loss")
}

impl FsState {
    /// Count one mutating operation against the power-loss budget.
    fn tick(&mut self) -> io::Result<()> {
        if self.faults.powered_off {
            return Err(power_loss());
        }
        if let Some(left) = self.faults.ops_before_power_loss.as_mut() {
            if *left == 0 {
                self.faults.powered_off = true;
                return Err(power_loss());
            }
            *left -= 1;
        }
        Ok(())
    }

    fn check_powered(&self) -> io::Result<()> {
        if self.faults.powered_off {
            Err(power_loss())
        } else {
            Ok(())
        }
    }

    fn inode(&mut self, id: u64) -> io::Result<&mut Inode> {
        self.inodes
            .get_mut(&id)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "inode vanished"))
    }

    fn mark_dirty(inode: &mut Inode, from: usize) {
        inode.dirty_from = Some(inode.dirty_from.map_or(from, |d| d.min(from)));
    }

    fn torn_image(rng: &mut fastrand::Rng, inode: &Inode) -> Vec<u8> {
        let Some(dirty_from) = inode.dirty_from else {
            return inode.durable.clone();
        };
        let mut image = inode.durable.clone();
        if inode.live.len() < image.len() && rng.bool() {
            image.truncate(inode.live.len().max(dirty_from.min(image.len())));
        }
        let first_sector = dirty_from / SECTOR_BYTES;
        let end_sector = inode.live.len().div_ceil(SECTOR_BYTES);
        if end_sector <= first_sector {
            return image;
        }
        // A prefix of the unsynced sectors reaches the disk in order, then a few stragglers.
        let in_order = rng.usize(first_sector..=end_sector);
        for sector in first_sector..end_sector {
            if sector >= in_order && rng.u8(..) >= 48 {
                continue;
            }
            let start = (sector * SECTOR_BYTES).max(dirty_from);
            let end = ((sector + 1) * SECTOR_BYTES).min(inode.live.len());
            if image.len() < end {
                image.resize(end, 0);
            }
            image[start..end].copy_from_slice(&inode.live[start..end]);
        }
        image
    }
}

impl FaultVfs {
    pub fn new(seed: u64) -> FaultVfs {
        FaultVfs {
            state: Arc::new(Mutex::new(FsState {
                live: BTreeMap::new(),
                durable: BTreeMap::new(),
                dirs: BTreeSet::new(),
                inodes: HashMap::new(),
                next_inode: 1,
                epoch: 0,
                faults: Faults::default(),
                rng: fastrand::Rng::with_seed(seed),
                crashes: 0,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, FsState> {
        // A panic while holding this lock is a test bug; keep going with the data as it is.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An independent copy of this file system's durable state (as if after a crash), for
    /// trying many damages on the same starting point.
    pub fn durable_copy(&self, seed: u64) -> FaultVfs {
        let state = self.lock();
        let inodes = state
            .durable
            .values()
            .filter_map(|id| {
                let inode = state.inodes.get(id)?;
                let image = inode.durable.clone();
                Some((
                    *id,
                    Inode {
                        live: image.clone(),
                        durable: image,
                        dirty_from: None,
                    },
                ))
            })
            .collect();
        FaultVfs {
            state: Arc::new(Mutex::new(FsState {
                live: state.durable.clone(),
                durable: state.durable.clone(),
                dirs: state.dirs.clone(),
                inodes,
                next_inode: state.next_inode,
                epoch: 0,
                faults: Faults::default(),
                rng: fastrand::Rng::with_seed(seed),
                crashes: 0,
            })),
        }
    }

    /// Lose power: every open handle stops working, and the file system becomes what was durable
    /// (plus, with [`CrashMode::TornWrites`], some unsynced sectors). Disarms all faults.
    pub fn crash(&self, mode: CrashMode) {
        let mut state = self.lock();
        let state = &mut *state;
        state.epoch += 1;
        state.crashes += 1;
        state.faults = Faults::default();
        state.live = state.durable.clone();
        let referenced: BTreeSet<u64> = state.durable.values().copied().collect();
        state.inodes.retain(|id, _| referenced.contains(id));
        for inode in state.inodes.values_mut() {
            let image = match mode {
                CrashMode::DropUnsynced => inode.durable.clone(),
                CrashMode::TornWrites => FsState::torn_image(&mut state.rng, inode),
            };
            inode.durable = image.clone();
            inode.live = image;
            inode.dirty_from = None;
        }
    }

    /// Fail the next `count` calls to `sync_data` with EIO.
    pub fn fail_next_syncs(&self, count: u32) {
        self.lock().faults.syncs_to_fail = count;
    }

    /// Let `bytes` more bytes be written, then fail writes with ENOSPC (`None` lifts the limit).
    pub fn set_write_budget(&self, bytes: Option<u64>) {
        self.lock().faults.write_budget_bytes = bytes;
    }

    /// After `ops` more mutating operations, every operation fails as if the power went out.
    pub fn power_loss_after(&self, ops: u64) {
        self.lock().faults.ops_before_power_loss = Some(ops);
    }

    pub fn is_powered_off(&self) -> bool {
        self.lock().faults.powered_off
    }

    /// Flip one bit of a file, in both its live and durable images (media corruption).
    pub fn flip_bit(&self, path: &Path, byte: u64, bit: u8) -> io::Result<()> {
        let mut state = self.lock();
        let id = *state.live.get(path).ok_or_else(|| not_found(path))?;
        let inode = state.inode(id)?;
        let byte = usize::try_from(byte).map_err(|_| io::Error::other("offset too large"))?;
        for image in [&mut inode.live, &mut inode.durable] {
            if let Some(b) = image.get_mut(byte) {
                *b ^= 1 << (bit % 8);
            }
        }
        Ok(())
    }

    /// Cut a file to `len` bytes in both images (a torn tail made by hand).
    pub fn truncate_durable(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut state = self.lock();
        let id = *state.live.get(path).ok_or_else(|| not_found(path))?;
        let inode = state.inode(id)?;
        let len = usize::try_from(len).map_err(|_| io::Error::other("length too large"))?;
        inode.live.truncate(len);
        inode.durable.truncate(len);
        Ok(())
    }

    /// Length of a file's live image.
    pub fn file_len(&self, path: &Path) -> Option<u64> {
        let state = self.lock();
        let id = state.live.get(path)?;
        state.inodes.get(id).map(|i| i.live.len() as u64)
    }

    pub fn crash_count(&self) -> u64 {
        self.lock().crashes
    }
}

impl Vfs for FaultVfs {
    fn background_io(&self) -> bool {
        false
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn VFile>> {
        let mut state = self.lock();
        let existing = state.live.get(path).copied();
        let id = match (mode, existing) {
            (OpenMode::Read | OpenMode::ReadWrite, Some(id)) => {
                state.check_powered()?;
                id
            }
            (OpenMode::Read | OpenMode::ReadWrite, None) => return Err(not_found(path)),
            (OpenMode::CreateNew, Some(_)) => {
                return Err(io::Error::new(io::ErrorKind::AlreadyExists, "file exists"))
            }
            (OpenMode::CreateTruncate, Some(id)) => {
                state.tick()?;
                let inode = state.inode(id)?;
                if !inode.live.is_empty() {
                    inode.live.clear();
                    FsState::mark_dirty(inode, 0);
                }
                id
            }
            (OpenMode::CreateNew | OpenMode::CreateTruncate, None) => {
                state.tick()?;
                let parent = path.parent().unwrap_or(Path::new(""));
                if !state.dirs.contains(parent) {
                    return Err(not_found(parent));
                }
                let id = state.next_inode;
                state.next_inode += 1;
                state.inodes.insert(
                    id,
                    Inode {
                        live: Vec::new(),
                        durable: Vec::new(),
                        dirty_from: None,
                    },
                );
                state.live.insert(path.to_path_buf(), id);
                id
            }
        };
        Ok(Arc::new(FaultFile {
            state: Arc::clone(&self.state),
            inode: id,
            epoch: state.epoch,
            writable: mode != OpenMode::Read,
        }))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.tick()?;
        state
            .live
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| not_found(path))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.tick()?;
        let id = state.live.remove(from).ok_or_else(|| not_found(from))?;
        state.live.insert(to.to_path_buf(), id);
        Ok(())
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = self.lock();
        state.check_powered()?;
        if !state.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        Ok(state
            .live
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect())
    }

    fn list_subdirs(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = self.lock();
        state.check_powered()?;
        Ok(state
            .dirs
            .iter()
            .filter(|d| d.parent() == Some(dir))
            .filter_map(|d| d.file_name()?.to_str().map(str::to_owned))
            .collect())
    }

    /// Removes files and directories at once, durably (a simplification: the broker syncs the
    /// parent right after, and a resurrected half-deleted directory is cleaned up on open).
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.tick()?;
        if !state.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        state.dirs.retain(|d| !d.starts_with(dir));
        state.live.retain(|p, _| !p.starts_with(dir));
        state.durable.retain(|p, _| !p.starts_with(dir));
        Ok(())
    }

    /// Directories are durable as soon as they exist: the engine creates them once, up front,
    /// and syncs their parent; modelling lost directories would test the broker, not the log.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.tick()?;
        for ancestor in dir.ancestors() {
            state.dirs.insert(ancestor.to_path_buf());
        }
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.tick()?;
        let state = &mut *state;
        state.durable.retain(|p, _| p.parent() != Some(dir));
        for (path, id) in state.live.iter().filter(|(p, _)| p.parent() == Some(dir)) {
            state.durable.insert(path.clone(), *id);
        }
        Ok(())
    }

    fn exists(&self, path: &Path) -> bool {
        let state = self.lock();
        state.live.contains_key(path) || state.dirs.contains(path)
    }

    /// Every file's live image and every directory entry become durable. An armed fsync failure
    /// fails it the way Linux does: the dirty pages are dropped (marked clean) and EIO returned.
    fn sync_all(&self, _dir: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.tick()?;
        let state = &mut *state;
        if state.faults.syncs_to_fail > 0 {
            state.faults.syncs_to_fail -= 1;
            for inode in state.inodes.values_mut() {
                inode.dirty_from = None;
            }
            return Err(io::Error::from_raw_os_error(5));
        }
        for inode in state.inodes.values_mut() {
            if inode.dirty_from.take().is_some() {
                inode.durable = inode.live.clone();
            }
        }
        state.durable = state.live.clone();
        Ok(())
    }
}

struct FaultFile {
    state: Arc<Mutex<FsState>>,
    inode: u64,
    epoch: u64,
    writable: bool,
}

impl FaultFile {
    fn lock(&self) -> io::Result<MutexGuard<'_, FsState>> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.epoch != self.epoch {
            return Err(io::Error::other("file handle from before a crash"));
        }
        Ok(state)
    }

    fn check_writable(&self) -> io::Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "read-only handle",
            ))
        }
    }
}

fn to_usize(value: u64) -> io::Result<usize> {
    usize::try_from(value).map_err(|_| io::Error::other("position too large"))
}

impl VFile for FaultFile {
    fn len(&self) -> io::Result<u64> {
        let mut state = self.lock()?;
        state.check_powered()?;
        Ok(state.inode(self.inode)?.live.len() as u64)
    }

    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        let mut state = self.lock()?;
        state.check_powered()?;
        let live = &state.inode(self.inode)?.live;
        let pos = to_usize(pos)?;
        if pos >= live.len() {
            return Ok(0);
        }
        let n = buf.len().min(live.len() - pos);
        buf[..n].copy_from_slice(&live[pos..pos + n]);
        Ok(n)
    }

    fn write_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        self.check_writable()?;
        let mut state = self.lock()?;
        state.tick()?;
        let pos = to_usize(pos)?;
        let mut len = buf.len();
        let mut enospc = false;
        if let Some(budget) = state.faults.write_budget_bytes.as_mut() {
            if (len as u64) > *budget {
                len = to_usize(*budget)?;
                enospc = true;
            }
            *budget -= len as u64;
        }
        let inode = state.inode(self.inode)?;
        if inode.live.len() < pos + len {
            inode.live.resize(pos + len, 0);
        }
        inode.live[pos..pos + len].copy_from_slice(&buf[..len]);
        FsState::mark_dirty(inode, pos);
        if enospc {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "no space left on device",
            ));
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.check_writable()?;
        let mut state = self.lock()?;
        state.tick()?;
        let len = to_usize(len)?;
        let inode = state.inode(self.inode)?;
        let old = inode.live.len();
        inode.live.resize(len, 0);
        FsState::mark_dirty(inode, old.min(len));
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut state = self.lock()?;
        state.tick()?;
        let fail = state.faults.syncs_to_fail > 0;
        if fail {
            state.faults.syncs_to_fail -= 1;
        }
        let inode = state.inode(self.inode)?;
        if fail {
            // Linux marks the failed pages clean: a later fsync succeeds without writing them.
            inode.dirty_from = None;
            return Err(io::Error::from_raw_os_error(5)); // EIO
        }
        if let Some(from) = inode.dirty_from.take() {
            let from = from.min(inode.durable.len());
            inode.durable.truncate(from);
            let live_from = from.min(inode.live.len());
            inode.durable.extend_from_slice(&inode.live[live_from..]);
            inode.durable.truncate(inode.live.len());
        }
        Ok(())
    }

    fn map(&self) -> io::Result<Bytes> {
        let mut state = self.lock()?;
        state.check_powered()?;
        Ok(Bytes::from(state.inode(self.inode)?.live.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (FaultVfs, PathBuf) {
        let vfs = FaultVfs::new(7);
        let dir = PathBuf::from("/d");
        vfs.create_dir_all(&dir).unwrap();
        (vfs, dir)
    }

    #[test]
    fn unsynced_data_and_entries_are_lost_on_crash() {
        let (vfs, dir) = setup();
        let a = dir.join("a");
        let f = vfs.open(&a, OpenMode::CreateNew).unwrap();
        f.write_at(b"hello", 0).unwrap();
        f.sync_data().unwrap();
        vfs.crash(CrashMode::DropUnsynced);
        assert!(!vfs.exists(&a), "directory entry was never synced");
        assert!(f.len().is_err(), "old handles die with the crash");

        let f = vfs.open(&a, OpenMode::CreateNew).unwrap();
        f.write_at(b"hello", 0).unwrap();
        f.sync_data().unwrap();
        vfs.sync_dir(&dir).unwrap();
        f.write_at(b" world", 5).unwrap();
        vfs.crash(CrashMode::DropUnsynced);
        let f = vfs.open(&a, OpenMode::Read).unwrap();
        assert_eq!((*f).read_all().unwrap(), b"hello");
    }

    #[test]
    fn failed_fsync_marks_pages_clean() {
        let (vfs, dir) = setup();
        let f = vfs.open(&dir.join("a"), OpenMode::CreateNew).unwrap();
        vfs.sync_dir(&dir).unwrap();
        f.write_at(b"data", 0).unwrap();
        vfs.fail_next_syncs(1);
        assert_eq!(f.sync_data().unwrap_err().raw_os_error(), Some(5));
        f.sync_data().unwrap(); // "succeeds", but the data was dropped
        vfs.crash(CrashMode::DropUnsynced);
        assert_eq!(vfs.file_len(&dir.join("a")), Some(0));
    }

    #[test]
    fn torn_writes_keep_whole_sectors_only() {
        for seed in 0..50 {
            let vfs = FaultVfs::new(seed);
            let dir = PathBuf::from("/d");
            vfs.create_dir_all(&dir).unwrap();
            let path = dir.join("a");
            let f = vfs.open(&path, OpenMode::CreateNew).unwrap();
            vfs.sync_dir(&dir).unwrap();
            let data: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8 + 1).collect();
            f.write_at(&data, 0).unwrap();
            vfs.crash(CrashMode::TornWrites);
            let f = vfs.open(&path, OpenMode::Read).unwrap();
            let image = (*f).read_all().unwrap();
            for (i, sector) in image.chunks(SECTOR_BYTES).enumerate() {
                let expect = &data[i * SECTOR_BYTES..i * SECTOR_BYTES + sector.len()];
                assert!(sector == expect || sector.iter().all(|&b| b == 0));
            }
        }
    }

    #[test]
    fn enospc_and_power_loss() {
        let (vfs, dir) = setup();
        let f = vfs.open(&dir.join("a"), OpenMode::CreateNew).unwrap();
        vfs.set_write_budget(Some(3));
        let err = f.write_at(b"hello", 0).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert_eq!(f.len().unwrap(), 3, "a partial write can remain");
        vfs.set_write_budget(None);
        vfs.power_loss_after(1);
        f.write_at(b"x", 0).unwrap();
        assert!(f.write_at(b"y", 0).is_err());
        assert!(vfs.is_powered_off());
        vfs.crash(CrashMode::DropUnsynced);
        assert!(!vfs.is_powered_off());
    }
}
