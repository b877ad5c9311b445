//! The production file system: `std::fs` with positional I/O and `memmap2`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use super::{OpenMode, VFile, Vfs};

/// The real file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct OsVfs;

impl Vfs for OsVfs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn VFile>> {
        let mut options = OpenOptions::new();
        match mode {
            OpenMode::Read => options.read(true),
            OpenMode::ReadWrite => options.read(true).write(true),
            OpenMode::CreateNew => options.read(true).write(true).create_new(true),
            OpenMode::CreateTruncate => options.read(true).write(true).create(true).truncate(true),
        };
        Ok(Arc::new(OsFile {
            file: options.open(path)?,
        }))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                if let Some(name) = entry.file_name().to_str() {
                    names.push(name.to_owned());
                }
            }
        }
        Ok(names)
    }

    fn list_subdirs(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                if let Some(name) = entry.file_name().to_str() {
                    names.push(name.to_owned());
                }
            }
        }
        Ok(names)
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::remove_dir_all(dir)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    #[cfg(target_os = "linux")]
    fn sync_all(&self, dir: &Path) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let handle = File::open(dir)?;
        // SAFETY: a plain system call on a descriptor owned by `handle`; no memory is passed.
        // Since Linux 5.8 syncfs reports write-back errors of any file on the file system.
        let result = unsafe { libc::syncfs(handle.as_raw_fd()) };
        if result == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn sync_all(&self, _dir: &Path) -> io::Result<()> {
        // SAFETY: `sync` takes no arguments; it schedules (and on most systems waits for) the
        // write-back of every file system.
        unsafe { libc::sync() };
        Ok(())
    }
}

struct OsFile {
    file: File,
}

impl VFile for OsFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        loop {
            match self.file.read_at(buf, pos) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    fn write_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        self.file.write_all_at(buf, pos)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    #[cfg(target_os = "linux")]
    fn write_back(&self, pos: u64, len: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER;
        let (pos, len) = (pos as libc::off64_t, len as libc::off64_t);
        // SAFETY: a plain system call on a descriptor this struct owns; no memory is passed.
        let result = unsafe { libc::sync_file_range(self.file.as_raw_fd(), pos, len, flags) };
        if result == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn map(&self) -> io::Result<Bytes> {
        if self.len()? == 0 {
            // mmap of an empty file fails on Linux; an empty view is the honest answer.
            return Ok(Bytes::new());
        }
        // SAFETY: callers only map sealed files, which Potok never writes or truncates again
        // while they are open (retention unlinks them, which leaves existing maps valid).
        let map = unsafe { memmap2::Mmap::map(&self.file)? };
        Ok(Bytes::from_owner(map))
    }
}
