//! The I/O seam: every byte the storage engine reads or writes goes through [`Vfs`] and [`VFile`].
//!
//! Two implementations ship together, so that the crash tests exercise the same code paths as
//! production:
//!
//! - [`OsVfs`]: the real file system (positional I/O, `fdatasync`, `memmap2` for sealed files).
//! - [`FaultVfs`]: an in-memory file system that remembers which bytes and directory entries are
//!   durable, and can crash (dropping or tearing unsynced data), flip bits, fail `fsync` with EIO
//!   and fail writes with ENOSPC.
//!
//! The traits are deliberately small (the shape follows redb's `StorageBackend`): the engine only
//! needs positional reads and writes, `set_len`, `sync_data`, a read-only mapping of an immutable
//! file, and a handful of directory operations.

mod fault;
mod os;

use std::io;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

pub use fault::{CrashMode, FaultVfs};
pub use os::OsVfs;

/// How [`Vfs::open`] treats a missing or existing file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// Open an existing file for reading only.
    Read,
    /// Open an existing file for reading and writing.
    ReadWrite,
    /// Create the file (empty); fail if it exists.
    CreateNew,
    /// Create the file or truncate an existing one to zero length.
    CreateTruncate,
}

/// A file system: the directory-level half of the seam.
///
/// Directory changes (create, rename, remove) are durable only after [`Vfs::sync_dir`] on the
/// parent directory; [`FaultVfs`] enforces exactly that on a crash.
pub trait Vfs: Send + Sync + 'static {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn VFile>>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Names (not paths) of the regular files directly inside `dir`, in no particular order.
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Names of the directories directly inside `dir`.
    fn list_subdirs(&self, dir: &Path) -> io::Result<Vec<String>>;
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Remove a directory and everything in it (durable once the parent is synced).
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Make the directory's entries (creations, renames, removals) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    fn exists(&self, path: &Path) -> bool;
    /// Make everything written on the file system that holds `dir` durable: every file's data
    /// and every directory change (`syncfs`). A checkpoint uses it to make the output of many
    /// files durable with one call instead of one `fsync` each. An error means some of it may
    /// not be durable.
    fn sync_all(&self, dir: &Path) -> io::Result<()>;
    /// Whether logs may do optional I/O on a background thread (zero-filling ahead of the
    /// writes). [`FaultVfs`] says no, so that a seeded run does its operations in one order.
    fn background_io(&self) -> bool {
        true
    }
}

/// An open file: the byte-level half of the seam. All positions are absolute (`pread`/`pwrite`),
/// so one handle can be shared by a writer and many readers without a cursor.
#[allow(clippy::len_without_is_empty)] // a file's length is an I/O call; emptiness is not asked
pub trait VFile: Send + Sync {
    fn len(&self) -> io::Result<u64>;
    /// Read up to `buf.len()` bytes at `pos`; returns how many were read (0 at end of file).
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize>;
    /// Write all of `buf` at `pos`, extending the file if needed.
    fn write_at(&self, buf: &[u8], pos: u64) -> io::Result<()>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// `fdatasync`: make the file's contents durable.
    fn sync_data(&self) -> io::Result<()>;
    /// Write back the given range now and wait for it (`sync_file_range`), so that a later
    /// `sync_data` finds it clean. Not a durability promise: metadata may still be unsynced.
    fn write_back(&self, _pos: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
    /// A read-only view of the whole file. Only used on files that no longer change (sealed
    /// segments); the OS implementation memory-maps them.
    fn map(&self) -> io::Result<Bytes>;
}

impl<'a> dyn VFile + 'a {
    /// Read exactly `buf.len()` bytes at `pos`, or fail with `UnexpectedEof`.
    pub fn read_exact_at(&self, mut buf: &mut [u8], mut pos: u64) -> io::Result<()> {
        while !buf.is_empty() {
            let n = self.read_at(buf, pos)?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short read"));
            }
            buf = &mut buf[n..];
            pos += n as u64;
        }
        Ok(())
    }

    /// Read the whole file into memory.
    pub fn read_all(&self) -> io::Result<Vec<u8>> {
        let len = usize::try_from(self.len()?)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "file too large"))?;
        let mut buf = vec![0u8; len];
        self.read_exact_at(&mut buf, 0)?;
        Ok(buf)
    }
}

/// Write a small metadata file atomically: write `path.tmp`, fsync it, rename over `path`, fsync
/// the directory. After a crash the file holds either the old or the new contents, never a mix.
pub fn write_atomically(vfs: &dyn Vfs, path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no parent"))?;
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = Path::new(&tmp_name);
    let file = vfs.open(tmp, OpenMode::CreateTruncate)?;
    file.write_at(contents, 0)?;
    file.sync_data()?;
    drop(file);
    vfs.rename(tmp, path)?;
    vfs.sync_dir(dir)
}
