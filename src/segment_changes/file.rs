//! Segment changes as JSON lines (`segment-changes.jsonl` in the data folder by default): one
//! [`SegmentChange`] per line, written and synced before a batch is acknowledged.

use super::{SegmentChange, SegmentChangeError, SegmentChangeSink};
use crate::synced_file::SyncedFile;
use async_trait::async_trait;
use std::path::Path;

pub struct SegmentChangeFile(SyncedFile);

impl SegmentChangeFile {
    pub fn open(path: &Path) -> Result<Self, SegmentChangeError> {
        SyncedFile::open(path, 0o644).map(Self).map_err(|e| {
            SegmentChangeError(format!(
                "cannot open the segment change file {}: {e}",
                path.display()
            ))
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
        self.0.append(text).await.map_err(|e| {
            SegmentChangeError(format!("cannot write {}: {e}", self.0.path().display()))
        })
    }

    fn describe(&self) -> String {
        format!("segment changes to {}", self.0.path().display())
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
