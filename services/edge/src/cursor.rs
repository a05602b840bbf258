//! Durable source cursors: a restarted poller resumes where it stopped.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically: a temporary file in the same
/// directory, fsync, rename, fsync of the directory. A crash leaves either
/// the old or the new content, never a torn file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("cursor")
    ));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The position of one source (a cursor, a watermark, a file offset),
/// stored as text in one file.
#[derive(Debug, Clone)]
pub struct CursorStore {
    path: PathBuf,
}

impl CursorStore {
    /// The store of `source` under `<data_dir>/edge/cursors/`.
    pub fn new(data_dir: &Path, source: &str) -> std::io::Result<Self> {
        let dir = data_dir.join("edge").join("cursors");
        std::fs::create_dir_all(&dir)?;
        Ok(CursorStore {
            path: dir.join(format!("{source}.cursor")),
        })
    }

    /// The stored position; `None` when none was stored.
    pub fn load(&self) -> std::io::Result<Option<String>> {
        match std::fs::read_to_string(&self.path) {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The stored position read as JSON `T`; the default when none was
    /// stored. An unreadable file is an error naming it.
    pub fn load_json<T: serde::de::DeserializeOwned + Default>(&self) -> std::io::Result<T> {
        match self.load()? {
            None => Ok(T::default()),
            Some(t) => serde_json::from_str(&t).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {e}", self.path.display()),
                )
            }),
        }
    }

    /// Stores `text` durably.
    pub fn store(&self, text: &str) -> std::io::Result<()> {
        write_atomic(&self.path, text.as_bytes())
    }

    /// Stores `value` as JSON, durably.
    pub fn store_json<T: serde::Serialize>(&self, value: &T) -> std::io::Result<()> {
        let text = serde_json::to_string(value).map_err(std::io::Error::other)?;
        self.store(&text)
    }

    /// Where the position lives.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_survives_a_new_store() {
        let dir = tempfile::tempdir().unwrap();
        let a = CursorStore::new(dir.path(), "pos").unwrap();
        assert_eq!(a.load().unwrap(), None);
        a.store("42").unwrap();
        a.store("4242").unwrap();
        let b = CursorStore::new(dir.path(), "pos").unwrap();
        assert_eq!(b.load().unwrap().as_deref(), Some("4242"));
    }

    #[test]
    fn a_corrupt_cursor_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let a = CursorStore::new(dir.path(), "pos").unwrap();
        std::fs::write(a.path(), "garbage").unwrap();
        let e = a.load_json::<Vec<u8>>().unwrap_err().to_string();
        assert!(e.contains("pos.cursor"), "{e}");
    }
}
