//! Dead letters as JSON lines: `{at, position, stage, class, reason, key_base64, sealing,
//! sealed_payload_base64}`, and `zone` with residency zones. The payload is the event as it arrived, sealed (`sealing` says
//! under which key; ARCHITECTURE.md has the format), so the file holds no plaintext PII; it is
//! still created with mode 0600.

use super::{DeadLetter, DeadLetterError, DeadLetterSink, Sealing, SinkProblem};
use crate::synced_file::SyncedFile;
use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use std::path::Path;

pub struct DeadLetterFile(SyncedFile);

impl DeadLetterFile {
    pub fn open(path: &Path) -> Result<Self, DeadLetterError> {
        SyncedFile::open(path, 0o600)
            .map(Self)
            .map_err(|e| DeadLetterError(format!("cannot open {}: {e}", path.display())))
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

/// The JSON line of one dead letter.
pub fn to_line(letter: &DeadLetter) -> String {
    let mut line = serde_json::json!({
        "at": letter.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "position": letter.position,
        "stage": letter.stage,
        "class": letter.class,
        "reason": letter.reason,
        "key_base64": letter.key.as_ref().map(|k| STANDARD.encode(k)),
        "sealing": letter.sealing.to_string(),
        "sealed_payload_base64": STANDARD.encode(&letter.payload),
    });
    if let Some(zone) = &letter.zone {
        line["zone"] = serde_json::Value::from(zone.as_str());
    }
    line.to_string()
}

/// A line of a dead-letter file read back: its fields as written, and the sealed payload.
pub struct LetterLine {
    pub fields: serde_json::Map<String, serde_json::Value>,
    pub sealing: Sealing,
    pub payload: Vec<u8>,
}

/// Reads every line of a dead-letter file; a line that is not a dead letter is an error that
/// names its number.
pub fn read_letters(path: &Path) -> Result<Vec<LetterLine>, DeadLetterError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| DeadLetterError(format!("cannot read {}: {e}", path.display())))?;
    let bad = |n: usize, what: &str| {
        DeadLetterError(format!(
            "{} line {}: {what} (dead letters written before sealing have `payload_base64` instead: not readable here)",
            path.display(),
            n + 1
        ))
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, line)| {
            let serde_json::Value::Object(fields) =
                serde_json::from_str(line).map_err(|_| bad(n, "not a JSON object"))?
            else {
                return Err(bad(n, "not a JSON object"));
            };
            let sealing = fields
                .get("sealing")
                .and_then(|s| s.as_str())
                .ok_or_else(|| bad(n, "no `sealing`"))?
                .parse()
                .map_err(|e: String| bad(n, &e))?;
            let payload = fields
                .get("sealed_payload_base64")
                .and_then(|s| s.as_str())
                .and_then(|s| STANDARD.decode(s).ok())
                .ok_or_else(|| bad(n, "no base64 `sealed_payload_base64`"))?;
            Ok(LetterLine {
                fields,
                sealing,
                payload,
            })
        })
        .collect()
}

#[async_trait]
impl DeadLetterSink for DeadLetterFile {
    /// The file was opened for appending when the sink was made.
    async fn check(&self) -> Result<String, SinkProblem> {
        Ok(format!("{} is open for appending", self.path().display()))
    }

    async fn send(&self, letters: Vec<DeadLetter>) -> Result<(), DeadLetterError> {
        if letters.is_empty() {
            return Ok(());
        }
        let mut text = String::new();
        for letter in &letters {
            text.push_str(&to_line(letter));
            text.push('\n');
        }
        self.0
            .append(text)
            .await
            .map_err(|e| DeadLetterError(format!("cannot write {}: {e}", self.path().display())))
    }
}
