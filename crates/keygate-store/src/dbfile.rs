//! A database file on disk: created readable by its owner only, and recognised again — so
//! that a file deleted or replaced under a running process is noticed rather than written to.

use std::path::{Path, PathBuf};

use crate::StoreError;

/// A database file as it was when opened. It holds the file open, so that its inode cannot
/// be freed and handed to a new file at the same path while it is remembered.
#[derive(Debug)]
pub(crate) struct DbFile {
    path: PathBuf,
    held: std::fs::File,
}

impl DbFile {
    /// Creates `path` empty with mode 0600 if it is missing, so that SQLite (which gives
    /// `-wal` and `-shm` the database file's mode) never makes any of them world-readable.
    pub(crate) fn create_private(path: &Path) -> Result<(), StoreError> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        match options.open(path) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(StoreError::Backend(
                format!("cannot create {}: {e}", path.display()),
            )),
            _ => Ok(()),
        }
    }

    /// Remembers the file now at `path`.
    pub(crate) fn opened(path: PathBuf) -> Result<Self, StoreError> {
        let held = std::fs::File::open(&path)
            .map_err(|e| StoreError::Backend(format!("cannot read {}: {e}", path.display())))?;
        Ok(Self { path, held })
    }

    /// Fails if the file at the path is gone or is another file.
    pub(crate) fn check(&self) -> Result<(), StoreError> {
        let now = std::fs::metadata(&self.path).ok();
        let held = self.held.metadata().ok();
        if let (Some(now), Some(held)) = (now, held)
            && identity(&now) == identity(&held)
        {
            return Ok(());
        }
        tracing::error!(path = %self.path.display(), "the database file was deleted or replaced");
        Err(StoreError::Backend(format!(
            "the database file {} was deleted or replaced while keygate had it open; restart \
             keygate",
            self.path.display()
        )))
    }
}

impl DbFile {
    /// Fails if the file system holding the database has less than [`MIN_FREE_BYTES`]
    /// free: a write probe alone can pass on a full disk (SQLite rewrites its WAL in place), and
    /// the next real change then fails.
    pub(crate) fn check_room(&self) -> Result<(), StoreError> {
        let Ok(stats) = rustix::fs::fstatvfs(&self.held) else {
            return Ok(());
        };
        let free = stats.f_bavail.saturating_mul(stats.f_frsize);
        if free >= MIN_FREE_BYTES {
            return Ok(());
        }
        Err(StoreError::Backend(format!(
            "the disk holding {} is full ({free} bytes free)",
            self.path.display()
        )))
    }
}

/// Free space below which a SQLite database is reported as unable to take writes.
pub(crate) const MIN_FREE_BYTES: u64 = 64 * 1024;

/// A file's (device, inode): what tells the file at a path from one that replaced it
/// (elsewhere than Unix, only a missing file is noticed).
fn identity(meta: &std::fs::Metadata) -> (u64, u64) {
    #[cfg(unix)]
    return (
        std::os::unix::fs::MetadataExt::dev(meta),
        std::os::unix::fs::MetadataExt::ino(meta),
    );
    #[cfg(not(unix))]
    return (0, u64::from(meta.is_file()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_files_and_replacements_are_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        DbFile::create_private(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        DbFile::create_private(&path).expect("an existing file is kept");
        let file = DbFile::opened(path.clone()).unwrap();
        file.check().unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(
            matches!(file.check(), Err(StoreError::Backend(m)) if m.contains("deleted or replaced"))
        );
        std::fs::write(&path, b"another file").unwrap();
        assert!(
            matches!(file.check(), Err(StoreError::Backend(m)) if m.contains("deleted or replaced"))
        );
    }
}
