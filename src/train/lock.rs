//! The run-folder lock: one `ept train` at a time per run folder.
//!
//! `RUN/.lock` holds the pid of the process that trains in `RUN` and is locked
//! with `flock(LOCK_EX | LOCK_NB)`. The kernel drops the lock when the process
//! ends, however it ends, so a `.lock` left by a killed run (stale) blocks
//! nothing: the next `--resume` takes it over. The holder deletes the file when
//! it is done (on success and on error), so a finished run folder holds no
//! `.lock` and compares byte for byte with another run's; only a run that was
//! killed leaves one behind.
//!
//! The command line (`ept train`, `ept sweep`) takes the lock before it touches
//! the folder: before `--overwrite` empties it, before a resumed run reads its
//! checkpoint, and right after creating a new folder.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The name of the lock file inside a run folder.
pub const LOCK_FILE: &str = ".lock";

/// An exclusive hold on a run folder, released (and its file deleted) on drop.
#[derive(Debug)]
pub struct RunLock {
    dir: PathBuf,
    path: PathBuf,
    file: Option<File>,
}

impl RunLock {
    /// Locks the existing folder `dir`, or fails with one line naming the
    /// process that holds it. Once held, the temporary files and folders a dead
    /// writer left (`last.tmp-PID/`, `.NAME.tmp-PID`) are removed.
    pub fn acquire(dir: &Path) -> Result<RunLock> {
        let path = dir.join(LOCK_FILE);
        loop {
            let mut file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| Error::io(&path, e))?;
            // SAFETY: flock on a descriptor this function owns.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() != std::io::ErrorKind::WouldBlock {
                    return Err(Error::io(&path, err));
                }
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let holder = match text.trim().parse::<u32>() {
                    Ok(pid) => format!(" (pid {pid})"),
                    Err(_) => String::new(),
                };
                return Err(Error::data(
                    dir,
                    format!(
                        "the run folder is in use by another ept train{holder}; \
                         wait for it to finish, or train under another --name"
                    ),
                ));
            }
            // A holder that finished deletes the file; if it did so between our
            // open and our lock, we hold a lock on a file no one else sees: retry.
            let same = match (file.metadata(), std::fs::metadata(&path)) {
                (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
                _ => false,
            };
            if !same {
                continue;
            }
            let pid = format!("{}\n", std::process::id());
            file.set_len(0)
                .and_then(|()| file.write_all(pid.as_bytes()))
                .map_err(|e| Error::io(&path, e))?;
            let lock = RunLock {
                dir: dir.to_path_buf(),
                path,
                file: Some(file),
            };
            lock.remove_stale_temporaries();
            return Ok(lock);
        }
    }

    /// The locked folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Removes everything in the folder but the lock (`--overwrite`).
    pub fn empty_folder(&self) -> Result<()> {
        let entries = std::fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&self.dir, e))?;
            let path = entry.path();
            if entry.file_name() == LOCK_FILE {
                continue;
            }
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            let removed = if is_dir {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            removed.map_err(|e| Error::io(&path, e))?;
        }
        Ok(())
    }

    /// Only a process holding the lock writes in the folder, so any temporary
    /// left there is a dead process's.
    fn remove_stale_temporaries(&self) {
        for dir in [self.dir.clone(), self.dir.join("best")] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let path = entry.path();
                if name.starts_with("last.tmp-") && entry.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = std::fs::remove_dir_all(&path);
                } else if name.starts_with('.') && name.contains(".tmp-") {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Delete, then unlock (closing the file): see the retry in `acquire`.
        let _ = std::fs::remove_file(&self.path);
        drop(self.file.take());
    }
}
