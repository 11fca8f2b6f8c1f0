//! A file of events: an Avro object container file or newline-delimited JSON.

use super::{EventSource, Payload, SourceError, SourceRecord};
use crate::config::FileFormat;
use apache_avro::Schema;
use async_trait::async_trait;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct FileSource {
    name: String,
    records: Records,
    position: u64,
    total: Option<u64>,
}

// One per source, so the Avro reader's size does not matter.

enum Records {
    Jsonl(BufReader<File>),
    Avro {
        reader: Box<apache_avro::Reader<'static, BufReader<File>>>,
        writer: Arc<Schema>,
    },
}

impl FileSource {
    pub fn open(path: &Path, format: FileFormat) -> Result<Self, SourceError> {
        let read_err = |reason: String| SourceError::Read {
            what: format!("event file {}", path.display()),
            reason,
        };
        let file = File::open(path).map_err(|e| read_err(e.to_string()))?;
        let is_avro = match format {
            FileFormat::Avro => true,
            FileFormat::Jsonl => false,
            FileFormat::Auto => path.extension().is_some_and(|e| e == "avro"),
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        let (records, total) = if is_avro {
            crate::schema::limit_allocations();
            let reader = apache_avro::Reader::new(BufReader::new(file))
                .map_err(|e| read_err(format!("not an Avro object container file ({e})")))?;
            let writer = Arc::new(reader.writer_schema().clone());
            (
                Records::Avro {
                    reader: Box::new(reader),
                    writer,
                },
                None,
            )
        } else {
            (Records::Jsonl(BufReader::new(file)), count_lines(path))
        };
        Ok(Self {
            name,
            records,
            position: 0,
            total,
        })
    }
}

fn count_lines(path: &Path) -> Option<u64> {
    let file = File::open(PathBuf::from(path)).ok()?;
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut n = 0u64;
    loop {
        let buf = reader.fill_buf().ok()?;
        if buf.is_empty() {
            return Some(n);
        }
        n += buf.iter().filter(|&&b| b == b'\n').count() as u64;
        let len = buf.len();
        reader.consume(len);
    }
}

#[async_trait]
impl EventSource for FileSource {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<SourceRecord>, SourceError> {
        let mut batch = Vec::with_capacity(max.min(4096));
        while batch.len() < max {
            match &mut self.records {
                Records::Jsonl(reader) => {
                    let mut line = Vec::new();
                    let n = reader
                        .read_until(b'\n', &mut line)
                        .map_err(|e| SourceError::Read {
                            what: self.name.clone(),
                            reason: e.to_string(),
                        })?;
                    if n == 0 {
                        break;
                    }
                    self.position += 1;
                    while matches!(line.last(), Some(b'\n' | b'\r')) {
                        line.pop();
                    }
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    batch.push(SourceRecord {
                        position: format!("{}:{}", self.name, self.position),
                        key: None,
                        payload: Payload::Json(line),
                        meta: Default::default(),
                    });
                }
                Records::Avro { reader, writer } => {
                    let Some(next) = reader.next() else { break };
                    self.position += 1;
                    // A container file block that cannot be read ends the file: what follows
                    // cannot be located. It is an error, not a silent stop.
                    let value = next.map_err(|e| SourceError::Read {
                        what: format!("{} record {}", self.name, self.position),
                        reason: format!(
                            "corrupt Avro container block ({})",
                            crate::schema::avro_error_kind(&e)
                        ),
                    })?;
                    let mut bytes = Vec::new();
                    apache_avro::writer::datum::GenericDatumWriter::builder(writer)
                        .build()
                        .and_then(|w| w.write_value(&mut bytes, value))
                        .map_err(|e| SourceError::Read {
                            what: format!("{} record {}", self.name, self.position),
                            reason: format!(
                                "cannot re-encode the record ({})",
                                crate::schema::avro_error_kind(&e)
                            ),
                        })?;
                    batch.push(SourceRecord {
                        position: format!("{}#{}", self.name, self.position),
                        key: None,
                        payload: Payload::AvroDatum {
                            bytes,
                            writer: writer.clone(),
                        },
                        meta: Default::default(),
                    });
                }
            }
        }
        Ok(batch)
    }

    fn size_hint(&self) -> Option<u64> {
        self.total
    }
}
