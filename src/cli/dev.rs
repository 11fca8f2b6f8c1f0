//! `profile-sync dev …` (hidden): development helpers. `dev registry` serves the in-memory
//! Schema Registry test double (see `schema::registry_double`) for local runs and tests.

use super::{usage, Failure};
use std::io::Write;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Serve the Schema Registry test double until stopped. Prints its URL on stdout.
    Registry {
        /// Address to listen on; port 0 picks a free one.
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: String,
    },
}

pub async fn run(args: Args) -> Result<(), Failure> {
    match args.action {
        Action::Registry { listen } => {
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .map_err(|e| usage(anyhow::anyhow!("cannot listen on {listen}: {e}")))?;
            let addr = listener.local_addr()?;
            println!("schema registry test double listening on http://{addr}");
            std::io::stdout().flush()?;
            crate::schema::registry_double::serve(listener).await?;
            Ok(())
        }
    }
}
