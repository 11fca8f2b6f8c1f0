//! The PII canary: every PII value of a generated input (emails, phone numbers, names, avatar
//! URLs, IP addresses, streets, of every event, valid or not, any version), looked for in what a
//! run leaves where PII must never be: logs and panic output, metrics, index documents and
//! mappings, dead-letter headers, error messages, and stores in plaintext. One sweep, shared by
//! every test that checks for leaks.

use super::unwrap;
use aho_corasick::AhoCorasick;
use serde_json::Value as Json;
use std::path::Path;

/// The profile fields whose generated values are looked for. Shorter values (a two-letter
/// country) would match by chance and are left out.
const FIELDS: &[&str] = &[
    "email",
    "phone",
    "display_name",
    "avatar_url",
    "last_seen_ip",
];
const MIN_LEN: usize = 6;

pub struct Canary {
    needles: Vec<String>,
    matcher: AhoCorasick,
}

impl Canary {
    /// The PII values of a `generate --format jsonl` file.
    pub fn of_generated(jsonl: &Path) -> Self {
        let text = std::fs::read_to_string(jsonl).unwrap();
        let mut needles = Vec::new();
        for line in text.lines() {
            let Ok(event) = serde_json::from_str::<Json>(line) else {
                continue; // a malformed line by construction
            };
            let Some(profile) = unwrap(&event["profile"]).as_object() else {
                continue;
            };
            let street = profile
                .get("postal_address")
                .map(unwrap)
                .and_then(|a| a.get("street"));
            let values = FIELDS
                .iter()
                .filter_map(|f| profile.get(*f).map(unwrap))
                .chain(street);
            needles.extend(
                values
                    .filter_map(Json::as_str)
                    .filter(|v| v.len() >= MIN_LEN)
                    .map(str::to_string),
            );
        }
        needles.sort_unstable();
        needles.dedup();
        assert!(
            needles.len() > 100,
            "the canary has values to look for ({} in {})",
            needles.len(),
            jsonl.display()
        );
        let matcher = AhoCorasick::new(&needles).unwrap();
        Self { needles, matcher }
    }

    /// The values looked for, e.g. to ask a search index for some of them.
    pub fn needles(&self) -> &[String] {
        &self.needles
    }

    /// Fails, naming `what` (never the value), if `bytes` holds a generated PII value.
    pub fn assert_absent(&self, what: &str, bytes: impl AsRef<[u8]>) {
        if let Some(m) = self.matcher.find(bytes.as_ref()) {
            let needle = &self.needles[m.pattern().as_usize()];
            let field = classify(needle);
            panic!(
                "{what} holds a generated PII value ({field}, {} bytes, at byte {})",
                needle.len(),
                m.start()
            );
        }
    }

    /// Sweeps every file under `dir` but `except` (the generated input, which holds PII by
    /// design); returns how many files were swept.
    pub fn assert_absent_from_files(&self, dir: &Path, except: &[&Path]) -> usize {
        let files: Vec<_> = super::files_under(dir)
            .into_iter()
            .filter(|p| !except.iter().any(|e| p == e))
            .collect();
        for path in &files {
            let bytes = std::fs::read(path).unwrap_or_default();
            self.assert_absent(&path.display().to_string(), bytes);
        }
        files.len()
    }
}

/// Which kind of value was found, for a failure message that does not repeat it.
fn classify(needle: &str) -> &'static str {
    if needle.contains("://") {
        "an avatar URL"
    } else if needle.contains('@') {
        "an email"
    } else if needle.starts_with('+') {
        "a phone number"
    } else if needle.contains(['.', ':']) && !needle.contains(' ') {
        "an IP address"
    } else {
        "a name or a street"
    }
}
