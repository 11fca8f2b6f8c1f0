//! Segment changes as JSON lines (`segment-changes.jsonl` in the data folder by default): one
//! [`SegmentChange`] per line, written and synced before a batch is acknowledged.

use super::{SegmentChange, SegmentChangeError, SegmentChangeSink};
use async_trait::async_trait;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub struct SegmentChangeFile {
    path: PathBuf,
    file: Arc<Mutex<File>>,
}

impl SegmentChangeFile {
    pub fn open(path: &Path) -> Result<Self, SegmentChangeError> {
        let err = |e: std::io::Error| {
            SegmentChangeError(format!(
                "cannot open the segment change file {}: {e}",
                path.display()
            ))
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(err)?;
        Ok(Self {
            path: path.to_path_buf(),
            file: Arc::new(Mutex::new(file)),
        })
    }
}

#[async_trait]
impl SegmentChangeSink for SegmentChangeFile {
    async fn send(&self, changes: Vec<SegmentChange>) -> Result<(), SegmentChangeError> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut text = String::with_capacity(changes.len() * 160);
        for change in &changes {
            text.push_str(&change.to_line());
            text.push('\n');
        }
        let file = self.file.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let mut f = file
                .lock()
                .map_err(|_| SegmentChangeError("segment change file lock poisoned".into()))?;
            f.write_all(text.as_bytes())
                .and_then(|_| f.sync_data())
                .map_err(|e| SegmentChangeError(format!("cannot write {}: {e}", path.display())))
        })
        .await
        .map_err(|e| SegmentChangeError(e.to_string()))?
    }

    fn describe(&self) -> String {
        format!("segment changes to {}", self.path.display())
    }
}

/// The complete lines of `text`, parsed; a line that is not a segment change is an error that
/// names its number. `first_line` is the number of the first line of `text` in its file.
pub fn read_lines(text: &str, first_line: usize) -> Result<Vec<SegmentChange>, SegmentChangeError> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(n, line)| {
            serde_json::from_str(line).map_err(|e| {
                SegmentChangeError(format!(
                    "line {} is not a segment change ({})",
                    first_line + n,
                    e.classify_name()
                ))
            })
        })
        .collect()
}

/// The name of a serde_json error's category, without the text it quotes.
trait Classify {
    fn classify_name(&self) -> &'static str;
}

impl Classify for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "unreadable",
            serde_json::error::Category::Syntax => "not JSON",
            serde_json::error::Category::Data => "a field is missing or of the wrong type",
            serde_json::error::Category::Eof => "cut short",
        }
    }
}
