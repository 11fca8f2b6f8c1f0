//! `profile-sync serve` and `profile-sync api-keys create|list|revoke`: the profile API over
//! the pipeline file's store, index and keys, and the keys that open it.

use super::{data_dir, pipeline_file, usage, Failure, Output};
use crate::pipeline::{open_profiles, schemas, IndexAccess};
use crate::serve::oidc::Oidc;
use crate::serve::{shipped_roles, Api, ApiKeys, Policy};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(clap::Args)]
pub struct Args {
    /// Address to listen on (port 0 picks a free one; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Serve Prometheus metrics (per route: requests by status, latency) on this address.
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    #[command(flatten)]
    target: super::privacy::Target,
}

#[derive(clap::Subcommand)]
pub enum KeysCommand {
    /// Make a key for a client with a role; prints the key once (only its hash is kept).
    Create {
        /// Who the key is for; audit records name it as `api-key:<name>`.
        #[arg(long)]
        name: String,
        /// One of the pipeline file's `serve.roles` (or the shipped roles).
        #[arg(long)]
        role: String,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
        #[command(flatten)]
        target: super::privacy::Target,
    },
    /// List the keys (names, roles, ids, dates; never a key).
    List {
        #[command(flatten)]
        target: super::privacy::Target,
    },
    /// Revoke a key by id or name; it stops working at once.
    Revoke {
        id_or_name: String,
        #[command(flatten)]
        target: super::privacy::Target,
    },
}

/// The key file and the policy of the pipeline file.
fn keys_and_policy(
    target: &super::privacy::Target,
) -> Result<(crate::config::Pipeline, PathBuf, ApiKeys, Policy), Failure> {
    let file = pipeline_file(target.pipeline.as_deref())?;
    let dir = data_dir(&file, target.data_dir.as_deref());
    let schemas = schemas(&file).map_err(usage)?;
    let roles = file
        .config
        .serve
        .roles
        .clone()
        .unwrap_or_else(shipped_roles);
    let policy = Policy::new(&roles, schemas.catalog.top_level())
        .map_err(|e| usage(anyhow::anyhow!("{}: {e}", file.path.display())))?;
    let keys = ApiKeys::new(&file.data_path(&dir, &file.config.serve.api_keys));
    Ok((file, dir, keys, policy))
}

pub async fn keys(command: KeysCommand) -> Result<(), Failure> {
    match command {
        KeysCommand::Create {
            name,
            role,
            output,
            target,
        } => {
            let (_, _, keys, policy) = keys_and_policy(&target)?;
            if !policy.has_role(&role) {
                return Err(usage(anyhow::anyhow!(
                    "no role `{role}` (roles: {})",
                    policy.role_names().join(", ")
                )));
            }
            let (key, stored) = keys.create(&name, &role).map_err(usage)?;
            match output {
                Output::Json => println!(
                    "{}",
                    serde_json::json!({"key": key, "id": stored.id, "name": stored.name, "role": stored.role})
                ),
                Output::Text => {
                    println!("{key}");
                    eprintln!(
                        "profile-sync: key {} for {name} ({role}); shown once, only its hash is kept in {}",
                        stored.id,
                        keys.path().display()
                    );
                }
            }
        }
        KeysCommand::List { target } => {
            let (_, _, keys, _) = keys_and_policy(&target)?;
            for k in keys.list().map_err(usage)? {
                println!(
                    "{}",
                    serde_json::json!({"id": k.id, "name": k.name, "role": k.role, "created_at": k.created_at, "revoked_at": k.revoked_at})
                );
            }
        }
        KeysCommand::Revoke { id_or_name, target } => {
            let (_, _, keys, _) = keys_and_policy(&target)?;
            if !keys.revoke(&id_or_name).map_err(usage)? {
                return Err(usage(anyhow::anyhow!(
                    "no active key has the id or name {id_or_name:?}"
                )));
            }
            println!("{}", serde_json::json!({"revoked": id_or_name}));
        }
    }
    Ok(())
}

pub async fn run(args: Args) -> Result<(), Failure> {
    let (file, dir, keys, policy) = keys_and_policy(&args.target)?;
    let schemas = schemas(&file).map_err(usage)?;
    let profiles = open_profiles(&file, &dir, &schemas, IndexAccess::Read).map_err(usage)?;
    let oidc =
        match &file.config.serve.oidc {
            Some(config) => {
                let base = file.path.parent().unwrap_or(std::path::Path::new("."));
                Some(Oidc::open(config, base).await.map_err(|e| {
                    usage(anyhow::anyhow!("{}: serve.oidc: {e}", file.path.display()))
                })?)
            }
            None => None,
        };
    if let Some(addr) = args.metrics_addr {
        let health = Arc::new(crate::telemetry::Health::default());
        health.set_ready(true);
        let bound = crate::telemetry::server::serve(addr, health)
            .await
            .map_err(|e| usage(anyhow::anyhow!("cannot serve metrics on {addr}: {e}")))?;
        eprintln!("profile-sync: metrics on http://{bound}/metrics");
    }
    let api = Arc::new(Api::new(
        file,
        dir,
        profiles,
        schemas.catalog,
        policy,
        keys,
        oidc,
    ));
    let (listener, bound) = crate::serve::bind(args.listen)
        .await
        .map_err(|e| usage(anyhow::anyhow!("cannot listen on {}: {e}", args.listen)))?;
    eprintln!("profile-sync: serving the profile API on http://{bound}");
    crate::serve::serve(api, listener).await?;
    Ok(())
}
