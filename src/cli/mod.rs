//! The command line: parses arguments, calls the library, prints results. No pipeline logic
//! lives here. Exit codes: 0 success, 1 a failure while working (or invalid events found by
//! `validate`), 2 a usage or configuration problem, named in one paragraph.

mod bench;
mod bootstrap;
mod check;
mod dev;
mod dlq;
mod generate;
mod get;
mod kafka_args;
mod keys;
mod privacy;
mod produce;
mod reindex;
mod run;
mod schemas;
mod search;
mod segments;
mod serve;
mod table;
mod validate;
mod zones;

use clap::{Parser, Subcommand, ValueEnum};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The default pipeline file: the embedded mode, no servers.
pub const DEFAULT_PIPELINE: &str = "pipelines/local.yaml";

#[derive(Parser)]
#[command(
    name = "profile-sync",
    version,
    about = "Keeps user profiles in sync: Avro change events in; PII encrypted; a canonical store and a PII-free search index out."
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    #[value(alias = "table")]
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Process events through the pipeline (with no arguments: the sample events, embedded mode).
    Run(run::Args),
    /// Preflight: validate the pipeline file and try every dependency; a pass/fail table.
    Check(check::Args),
    /// Measure the embedded pipeline on generated events (throughput, latency, memory, keys, bytes).
    Bench(bench::Args),
    /// Write realistic synthetic events to a file.
    Generate(generate::Args),
    /// Search the profile index (no PII in it), with counts by field (--agg).
    Search(search::Args),
    /// Rebuild the OpenSearch index from the canonical store, then swap the aliases.
    Reindex(reindex::Args),
    /// Show a stored profile, PII masked unless revealed with a reason (audited).
    Get(get::Args),
    /// Check a file of events against the schemas and list every invalid one.
    Validate(validate::Args),
    /// Erase a user (right to be forgotten): their key is destroyed, the profile becomes a tombstone.
    Erase(privacy::EraseArgs),
    /// Export everything held about a user as one JSON document (right of access), audited.
    Export(privacy::ExportArgs),
    /// List the audit trail of a user.
    Audit(privacy::AuditArgs),
    /// Retention rules: anonymise inactive profiles, expire old audit records.
    #[command(subcommand)]
    Retention(privacy::RetentionCommand),
    /// Send generated events to a Kafka topic (Confluent wire format).
    Produce(produce::Args),
    /// Check or register the schemas in the Schema Registry.
    Schemas(schemas::Args),
    /// Work with the dead-letter topic.
    Dlq(dlq::Args),
    /// Serve the profile API (API keys, roles, field permissions, rate limits, audit).
    Serve(serve::Args),
    /// Keys of the profile API: create (shown once), list, revoke.
    #[command(subcommand, name = "api-keys")]
    ApiKeys(serve::KeysCommand),
    /// Follow the segment change feed, or backfill it with every user's current segments.
    Segments(segments::Args),
    /// Development helpers (the Schema Registry test double).
    #[command(hide = true)]
    Dev(dev::Args),
    /// Create the DynamoDB table (and, for development, the KMS key) a pipeline needs.
    Bootstrap(bootstrap::Args),
    /// Key-encryption key rotation and re-wrapping (KMS).
    #[command(subcommand)]
    Keys(keys::Command),
    /// Residency zones: list them, locate a user, move a user to another zone (audited).
    #[command(subcommand)]
    Zones(zones::Command),
}

/// How a command failed.
pub enum Failure {
    /// The user's input or configuration: exit code 2.
    Usage(anyhow::Error),
    /// Something went wrong while working: exit code 1.
    Runtime(anyhow::Error),
    /// Already reported; exit with this code.
    Quiet(u8),
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::Runtime(e.into())
    }
}

pub fn usage(e: impl Into<anyhow::Error>) -> Failure {
    Failure::Usage(e.into())
}

/// The pipeline file to use: the one given, or the default.
pub(crate) fn pipeline_file(given: Option<&Path>) -> Result<crate::config::Pipeline, Failure> {
    let path = given
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PIPELINE));
    if given.is_none() && !path.exists() {
        return Err(usage(anyhow::anyhow!(
            "no pipeline file at {DEFAULT_PIPELINE}: run profile-sync from the repository root, or pass --pipeline FILE"
        )));
    }
    crate::config::Pipeline::load(&path).map_err(usage)
}

/// The data directory: `--data-dir` (relative to the working directory) or the pipeline file's.
pub(crate) fn data_dir(file: &crate::config::Pipeline, given: Option<&Path>) -> PathBuf {
    given
        .map(Path::to_path_buf)
        .unwrap_or_else(|| file.resolve(&file.config.data_dir))
}

pub fn main() -> ExitCode {
    // A panic message could quote data; say where it happened, never what it held.
    std::panic::set_hook(Box::new(|info| {
        if stdout_was_closed(info) {
            // `profile-sync search … | head`: the reader left; end as a piped Unix tool does.
            std::process::exit(128 + 13);
        }
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("profile-sync: internal error{at}. This is a bug: please report it with the command you ran.");
    }));
    crate::schema::limit_allocations();
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("profile-sync: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run::run(args).await,
            Command::Check(args) => check::run(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Generate(args) => generate::run(args),
            Command::Search(args) => search::run(args).await,
            Command::Reindex(args) => reindex::run(args).await,
            Command::Get(args) => get::run(args).await,
            Command::Validate(args) => validate::run(args).await,
            Command::Erase(args) => privacy::erase(args).await,
            Command::Export(args) => privacy::export(args).await,
            Command::Audit(args) => privacy::audit(args).await,
            Command::Retention(command) => privacy::retention(command).await,
            Command::Produce(args) => produce::run(args).await,
            Command::Schemas(args) => schemas::run(args).await,
            Command::Dlq(args) => dlq::run(args).await,
            Command::Segments(args) => segments::run(args).await,
            Command::Serve(args) => serve::run(args).await,
            Command::ApiKeys(command) => serve::keys(command).await,
            Command::Dev(args) => dev::run(args).await,
            Command::Bootstrap(args) => bootstrap::run(args).await,
            Command::Keys(command) => keys::run(command).await,
            Command::Zones(command) => zones::run(command).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(e)) => {
            eprintln!("profile-sync: {}", paragraph(&e));
            ExitCode::from(2)
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("profile-sync: {}", paragraph(&e));
            ExitCode::from(1)
        }
        Err(Failure::Quiet(code)) => ExitCode::from(code),
    }
}

/// Whether a panic is `println!` finding stdout closed by its reader (EPIPE). The std message
/// is fixed text, never data. SIGPIPE stays ignored (Rust's default): the Kafka and HTTP
/// clients rely on getting EPIPE from a closed socket rather than a signal.
fn stdout_was_closed(info: &std::panic::PanicHookInfo<'_>) -> bool {
    let message = info
        .payload()
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| info.payload().downcast_ref::<&str>().copied())
        .unwrap_or_default();
    message.starts_with("failed printing to stdout") && message.contains("Broken pipe")
}

/// An error and its causes as one paragraph.
fn paragraph(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

/// Crates that log whole request and response bodies at trace level (KMS answers hold
/// plaintext keys; DynamoDB answers hold stored records and blind indices): their trace
/// events are never written, whatever `PROFILE_SYNC_LOG` asks.
const WIRE_LOGGERS: &[&str] = &[
    "aws_smithy_runtime",
    "aws_smithy_http",
    "hyper",
    "h2",
    "reqwest",
];

fn init_logging(format: LogFormat) {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_env("PROFILE_SYNC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,tantivy=error"));
    let no_wire_bodies = tracing_subscriber::filter::filter_fn(|meta| {
        *meta.level() != tracing::Level::TRACE
            || !WIRE_LOGGERS.iter().any(|t| meta.target().starts_with(t))
    });
    let registry = tracing_subscriber::registry().with(filter);
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Text => registry.with(layer.with_filter(no_wire_bodies)).init(),
        LogFormat::Json => registry
            .with(layer.json().with_filter(no_wire_bodies))
            .init(),
    }
}
