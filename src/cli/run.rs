//! `profile-sync run`: the main job.

use super::{data_dir, pipeline_file, usage, Failure, Output};
use crate::pipeline::{build, Counts};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// Pipeline file (default: pipelines/local.yaml, the embedded mode).
    #[arg(long)]
    pipeline: Option<PathBuf>,
    /// Read events from this file instead of the pipeline file's source.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Where the embedded store, index, keyring and dead letters live.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
    /// Serve /metrics, /healthz and /readyz on this address (e.g. 0.0.0.0:9898).
    #[arg(long, env = "PROFILE_SYNC_METRICS_ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// After a finite source is done, keep serving the endpoint until SIGINT or SIGTERM.
    #[arg(long, requires = "metrics_addr")]
    hold: bool,
    /// On SIGINT/SIGTERM: how long to finish the batches in flight and commit before giving up
    /// (exit 1, nothing uncommitted is committed). A second signal exits at once.
    #[arg(long, default_value_t = 30)]
    drain_deadline_secs: u64,
}

async fn next_signal(
    term: &mut tokio::signal::unix::Signal,
    int: &mut tokio::signal::unix::Signal,
) {
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// First signal: stop fetching and drain, bounded by `deadline`. Second signal: exit now.
fn on_signals(deadline: std::time::Duration) -> tokio::sync::watch::Receiver<bool> {
    use tokio::signal::unix::{signal, SignalKind};
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::warn!("cannot install signal handlers; SIGTERM will end the worker abruptly");
            return;
        };
        next_signal(&mut term, &mut int).await;
        eprintln!(
            "profile-sync: stopping: finishing the batches in flight and committing (up to {} s; signal again to exit at once)",
            deadline.as_secs()
        );
        let _ = tx.send(true);
        tokio::select! {
            _ = next_signal(&mut term, &mut int) => {
                eprintln!("profile-sync: second signal: exiting now without committing");
                std::process::exit(130);
            }
            _ = tokio::time::sleep(deadline) => {
                eprintln!("profile-sync: the batches in flight did not finish within {} s: exiting without committing them (they are replayed after a restart)", deadline.as_secs());
                std::process::exit(1);
            }
        }
    });
    rx
}

pub async fn run(args: Args) -> Result<(), Failure> {
    let file = pipeline_file(args.pipeline.as_deref())?;
    let data_dir = data_dir(&file, args.data_dir.as_deref());
    // The endpoint comes up first, so /readyz can say "not ready" while the adapters connect.
    let health = std::sync::Arc::new(crate::telemetry::Health::default());
    if let Some(addr) = args.metrics_addr {
        let bound = crate::telemetry::server::serve(addr, health.clone())
            .await
            .map_err(|e| usage(anyhow::anyhow!("cannot serve metrics on {addr}: {e}")))?;
        eprintln!("profile-sync: metrics, health and readiness on http://{bound}");
    }
    let mut components = build(&file, &data_dir, args.input.as_deref()).map_err(usage)?;
    // A dead-letter sink that refuses letters would stall the worker at the first one.
    match components.pipeline.dead_letters.check().await {
        Err(crate::dead_letter::SinkProblem::Refused(problem)) => {
            return Err(usage(anyhow::anyhow!(problem)))
        }
        Err(crate::dead_letter::SinkProblem::Unreachable(problem)) => {
            tracing::warn!(%problem, "dead-letter sink not reachable at startup; dead letters will wait for it")
        }
        Ok(_) => {}
    }
    if let Some(sink) = &components.pipeline.segment_changes {
        // The members gauge starts from the store's count and moves with every change.
        let mut members = components.pipeline.profiles.store.segment_members().await?;
        for name in components.pipeline.enricher.segments.names() {
            members.entry(name).or_default();
        }
        crate::telemetry::segment_members(&members);
        tracing::info!(sink = %sink.describe(), "segment change feed on");
    }
    components.pipeline.health = health.clone();
    let pipeline = std::sync::Arc::new(components.pipeline);
    if let Some(assigned) = components.source.assigned_partitions() {
        health.watch_assignment(assigned);
    }
    health.set_ready(true);
    let bar = indicatif::ProgressBar::new(components.source.size_hint().unwrap_or(0));
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {pos}/{len} events  {per_sec}  {msg}")
            .expect("static template"),
    );
    let started = Instant::now();
    let counts = crate::runtime::run(
        pipeline.clone(),
        components.source,
        crate::runtime::Settings::of(&file),
        on_signals(std::time::Duration::from_secs(args.drain_deadline_secs)),
        |c: &Counts| {
            bar.set_position(c.read);
            bar.set_message(format!("{} dead-lettered", c.dead_lettered));
        },
    )
    .await?;
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    let rate = if elapsed > 0.0 {
        counts.read as f64 / elapsed
    } else {
        0.0
    };
    match args.output {
        Output::Json => {
            let summary = serde_json::json!({
                "read": counts.read,
                "written": counts.written,
                "stale": counts.stale,
                "dead_lettered": counts.dead_lettered,
                "elapsed_seconds": (elapsed * 1000.0).round() / 1000.0,
                "events_per_second": rate.round(),
                "key_provider_calls": pipeline.profiles.keys.provider().calls(),
                "data_dir": data_dir,
            });
            println!("{summary}");
        }
        Output::Text => {
            println!("profile-sync run: {}", file.path.display());
            println!("  read           {:>9}", counts.read);
            println!("  written        {:>9}", counts.written);
            println!(
                "  stale          {:>9}   (older than or equal to the stored version: skipped)",
                counts.stale
            );
            println!(
                "  dead-lettered  {:>9}   (with reasons, in the dead-letter sink)",
                counts.dead_lettered
            );
            println!("  took {elapsed:.2} s ({rate:.0} events/s)");
            println!("data: {}", data_dir.display());
            println!("next: profile-sync search 'segments:high_value AND residency_zone:EU'");
            if pipeline.segment_changes.is_some() {
                println!("      profile-sync segments tail --no-follow | head");
            }
        }
    }
    if args.hold {
        use std::io::Write;
        let _ = std::io::stdout().flush();
        wait_for_signal().await;
    }
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
