//! The dead-letter port over several zones' sinks: a letter goes to the sink of the zone whose
//! key seals it, where that zone has a sink of its own, else to the pipeline's.

use super::feeds::ZoneFeeds;
use crate::dead_letter::{DeadLetter, DeadLetterError, DeadLetterSink, SinkProblem};
use async_trait::async_trait;
use std::sync::Arc;

pub struct ZonedDeadLetters {
    sinks: ZoneFeeds<dyn DeadLetterSink>,
}

impl ZonedDeadLetters {
    pub fn new(
        default: Arc<dyn DeadLetterSink>,
        zones: Vec<(String, Arc<dyn DeadLetterSink>)>,
    ) -> Self {
        Self {
            sinks: ZoneFeeds::new(default, zones),
        }
    }
}

#[async_trait]
impl DeadLetterSink for ZonedDeadLetters {
    async fn check(&self) -> Result<String, SinkProblem> {
        let mut said = vec![self.sinks.default().check().await?];
        for (zone, sink) in self.sinks.zones() {
            let ok = sink.check().await.map_err(|p| match p {
                SinkProblem::Unreachable(m) => {
                    SinkProblem::Unreachable(format!("zone {zone}: {m}"))
                }
                SinkProblem::Refused(m) => SinkProblem::Refused(format!("zone {zone}: {m}")),
            })?;
            said.push(format!("zone {zone}: {ok}"));
        }
        Ok(said.join("; "))
    }

    async fn send(&self, letters: Vec<DeadLetter>) -> Result<(), DeadLetterError> {
        self.sinks
            .send(letters, |l| l.zone.as_deref(), |sink, part| sink.send(part))
            .await
    }
}
