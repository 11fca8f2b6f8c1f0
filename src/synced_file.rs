//! An append-only file whose every append is synced before it returns: what the file sinks
//! (dead letters, segment changes) need before a batch may be acknowledged.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub struct SyncedFile {
    path: PathBuf,
    file: Arc<Mutex<File>>,
}

impl SyncedFile {
    /// Opens `path` for appending (creating it and its folder with `mode`).
    pub fn open(path: &Path, mode: u32) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(mode)
            .open(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            file: Arc::new(Mutex::new(file)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `text` and syncs the data, on the blocking pool.
    pub async fn append(&self, text: String) -> std::io::Result<()> {
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || {
            let mut f = file
                .lock()
                .map_err(|_| std::io::Error::other("file lock poisoned"))?;
            f.write_all(text.as_bytes()).and_then(|_| f.sync_data())
        })
        .await
        .map_err(std::io::Error::other)?
    }
}
