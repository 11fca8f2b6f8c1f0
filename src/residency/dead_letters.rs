//! The dead-letter port over several zones' sinks: a letter goes to the sink of the zone whose
//! key seals it, where that zone has a sink of its own, else to the pipeline's.

use crate::dead_letter::{DeadLetter, DeadLetterError, DeadLetterSink, SinkProblem};
use async_trait::async_trait;
use futures::future::try_join_all;
use std::sync::Arc;

pub struct ZonedDeadLetters {
    /// The pipeline's sink: the default zone's, and every zone's without its own.
    default: Arc<dyn DeadLetterSink>,
    /// The zones with a sink of their own.
    zones: Vec<(String, Arc<dyn DeadLetterSink>)>,
}

impl ZonedDeadLetters {
    pub fn new(
        default: Arc<dyn DeadLetterSink>,
        zones: Vec<(String, Arc<dyn DeadLetterSink>)>,
    ) -> Self {
        Self { default, zones }
    }

    fn sink_of(&self, letter: &DeadLetter) -> usize {
        letter
            .zone
            .as_deref()
            .and_then(|zone| self.zones.iter().position(|(name, _)| name == zone))
            .map_or(0, |i| i + 1)
    }

    fn sink(&self, i: usize) -> &Arc<dyn DeadLetterSink> {
        match i {
            0 => &self.default,
            i => &self.zones[i - 1].1,
        }
    }
}

#[async_trait]
impl DeadLetterSink for ZonedDeadLetters {
    async fn check(&self) -> Result<String, SinkProblem> {
        let mut said = vec![self.default.check().await?];
        for (zone, sink) in &self.zones {
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
        let mut by_sink: Vec<Vec<DeadLetter>> = vec![Vec::new(); self.zones.len() + 1];
        for letter in letters {
            by_sink[self.sink_of(&letter)].push(letter);
        }
        try_join_all(
            by_sink
                .into_iter()
                .enumerate()
                .filter(|(_, part)| !part.is_empty())
                .map(|(i, part)| self.sink(i).send(part)),
        )
        .await?;
        Ok(())
    }
}
