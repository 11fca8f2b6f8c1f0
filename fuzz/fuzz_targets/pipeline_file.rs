//! Any text as a pipeline file: the parser must answer a pipeline or an error naming the
//! problem; a panic is a finding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use profile_sync::config::Pipeline;
use std::path::Path;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(text) = std::str::from_utf8(bytes) {
        let _ = Pipeline::parse(Path::new("fuzz.yaml"), text);
    }
});
