//! A budget of open file descriptors shared by every entity log.
//!
//! A data directory may hold a million streams; the process may hold 1,024 descriptors. Entity
//! logs therefore keep no descriptor of their own: they ask this cache for their active segment's
//! file when they write or read it, and once `files_max` are open the cache closes the least
//! recently used eighth of them (one pass over the cache per that many opens, not one per
//! open). A handle handed out stays usable after it is dropped from the cache (the descriptor
//! closes when its last user lets go), so eviction never breaks a read in flight; the budget can
//! be exceeded by at most the number of reads in flight.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::io::{OpenMode, VFile, Vfs};

struct Slot {
    file: Arc<dyn VFile>,
    /// Tick of the last use: the smallest is evicted first.
    used: u64,
}

struct Cache {
    slots: HashMap<PathBuf, Slot>,
    tick: u64,
}

impl Cache {
    /// Remove the `count` least recently used slots; returns their files, for the caller to
    /// close once it lets go of the lock. Ticks are unique, so exactly `count` go.
    fn evict_oldest(&mut self, count: usize) -> Vec<Arc<dyn VFile>> {
        let mut ticks: Vec<u64> = self.slots.values().map(|slot| slot.used).collect();
        let count = count.min(ticks.len());
        if count == 0 {
            return Vec::new();
        }
        let (_, &mut newest_evicted, _) = ticks.select_nth_unstable(count - 1);
        let mut evicted = Vec::with_capacity(count);
        self.slots.retain(|_, slot| {
            let old = slot.used <= newest_evicted;
            if old {
                evicted.push(Arc::clone(&slot.file));
            }
            !old
        });
        evicted
    }
}

/// Open files by path, at most `files_max` of them held at once.
pub struct FileCache {
    vfs: Arc<dyn Vfs>,
    files_max: usize,
    cache: Mutex<Cache>,
}

/// Descriptors the cache keeps by default: a quarter of the soft `RLIMIT_NOFILE` (at least 16,
/// at most 4,096), leaving the rest to connections, the write-ahead log and sealed segments
/// being mapped.
pub fn default_files_max() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and reads nothing else.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur
    } else {
        1024
    };
    usize::try_from(soft / 4).unwrap_or(4096).clamp(16, 4096)
}

impl FileCache {
    pub fn new(vfs: Arc<dyn Vfs>, files_max: usize) -> FileCache {
        FileCache {
            vfs,
            files_max: files_max.max(1),
            cache: Mutex::new(Cache {
                slots: HashMap::new(),
                tick: 0,
            }),
        }
    }

    pub fn vfs(&self) -> &Arc<dyn Vfs> {
        &self.vfs
    }

    fn lock(&self) -> MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The file at `path` opened for reading and writing (it must exist), from the cache or
    /// opened now.
    pub fn open(&self, path: &Path) -> io::Result<Arc<dyn VFile>> {
        if let Some(file) = self.cached(path) {
            return Ok(file);
        }
        // Opened without the lock held: an open may block on the disk.
        let file = self.vfs.open(path, OpenMode::ReadWrite)?;
        Ok(self.insert(path, file))
    }

    /// Create the file at `path` (it must not exist) and cache it.
    pub fn create(&self, path: &Path) -> io::Result<Arc<dyn VFile>> {
        let file = self.vfs.open(path, OpenMode::CreateNew)?;
        Ok(self.insert(path, file))
    }

    fn cached(&self, path: &Path) -> Option<Arc<dyn VFile>> {
        let mut cache = self.lock();
        cache.tick += 1;
        let tick = cache.tick;
        let slot = cache.slots.get_mut(path)?;
        slot.used = tick;
        Some(Arc::clone(&slot.file))
    }

    fn insert(&self, path: &Path, file: Arc<dyn VFile>) -> Arc<dyn VFile> {
        let evicted;
        {
            let mut cache = self.lock();
            cache.tick += 1;
            let used = cache.tick;
            // Another thread may have opened it meanwhile: keep one handle.
            if let Some(slot) = cache.slots.get_mut(path) {
                slot.used = used;
                return Arc::clone(&slot.file);
            }
            evicted = if cache.slots.len() >= self.files_max {
                // The oldest eighth goes at once: one pass over the slots per that many
                // inserts, not one per insert (a checkpoint opens every log in turn).
                let keep = self.files_max - self.files_max / 8 - 1;
                let excess = cache.slots.len() - keep;
                cache.evict_oldest(excess)
            } else {
                Vec::new()
            };
            cache.slots.insert(
                path.to_path_buf(),
                Slot {
                    file: Arc::clone(&file),
                    used,
                },
            );
        }
        // Closed (when no reader holds them) without the lock held.
        drop(evicted);
        file
    }

    /// Drop the cached handle of `path` (the file is being sealed, truncated away or deleted).
    pub fn forget(&self, path: &Path) {
        self.lock().slots.remove(path);
    }

    /// Drop every cached handle under `dir` (the directory is being deleted).
    pub fn forget_dir(&self, dir: &Path) {
        self.lock().slots.retain(|path, _| !path.starts_with(dir));
    }

    /// Files held open now.
    pub fn open_count(&self) -> usize {
        self.lock().slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::io::FaultVfs;

    #[test]
    fn holds_at_most_its_budget_and_evicts_the_least_recently_used() {
        let vfs = FaultVfs::new(1);
        vfs.create_dir_all(Path::new("/d")).unwrap();
        let cache = FileCache::new(Arc::new(vfs.clone()), 3);
        let path = |i: u32| PathBuf::from(format!("/d/{i}"));
        for i in 0..3 {
            cache.create(&path(i)).unwrap().write_at(b"x", 0).unwrap();
        }
        // Use 0 so that 1 is the oldest, then open a fourth.
        cache.open(&path(0)).unwrap();
        cache.create(&path(3)).unwrap();
        assert_eq!(cache.open_count(), 3);
        assert!(
            cache.cached(&path(1)).is_none(),
            "the least recently used went"
        );
        assert!(cache.cached(&path(0)).is_some());
        // An evicted file reopens on demand, with its contents.
        let reopened = cache.open(&path(1)).unwrap();
        assert_eq!(reopened.len().unwrap(), 1);
        assert_eq!(cache.open_count(), 3);
        cache.forget_dir(Path::new("/d"));
        assert_eq!(cache.open_count(), 0);
        assert!(cache.open(&PathBuf::from("/d/missing")).is_err());
    }

    #[test]
    fn a_full_cache_evicts_its_oldest_eighth_and_never_a_recent_file() {
        let vfs = FaultVfs::new(1);
        vfs.create_dir_all(Path::new("/d")).unwrap();
        let cache = FileCache::new(Arc::new(vfs.clone()), 64);
        let path = |i: u32| PathBuf::from(format!("/d/{i}"));
        for i in 0..64 {
            cache.create(&path(i)).unwrap();
        }
        assert_eq!(cache.open_count(), 64);
        // Touch the first ten: they are now the most recently used.
        for i in 0..10 {
            cache.open(&path(i)).unwrap();
        }
        cache.create(&path(64)).unwrap();
        // 64 - 64/8 - 1 = 55 kept, then the new one: 56.
        assert_eq!(cache.open_count(), 56);
        for i in (0..10).chain(19..65) {
            assert!(cache.cached(&path(i)).is_some(), "{i} is recent");
        }
        for i in 10..19 {
            assert!(cache.cached(&path(i)).is_none(), "{i} was the oldest");
        }
        for i in 65..200 {
            cache.create(&path(i)).unwrap();
            assert!(cache.open_count() <= 64);
        }
    }
}
