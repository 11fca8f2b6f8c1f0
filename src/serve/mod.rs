//! `profile-sync serve`: the profile API. Every request is authenticated (an API key, or an
//! OIDC token from the identity provider the pipeline file names, as a bearer token), authorized at one policy point ([`policy::Policy`]: roles over actions,
//! field classes and fields), rate limited per key, and every reveal or lookup is written to
//! the audit trail under the authenticated principal before anything is answered. Errors are
//! RFC 9457 problem documents that name no values.

pub mod api_keys;
mod console;
mod limits;
mod observe;
pub mod oidc;
mod openapi;
pub mod policy;
mod problem;
mod routes;

pub use api_keys::{ApiKeys, Principal};
pub use policy::{shipped_roles, Action, Policy};

use crate::config;
use crate::indexes::{IndexError, SearchIndex};
use crate::privacy::Profiles;
use crate::schema::Catalog;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use uuid::Uuid;

/// Everything a request may need, shared by the handlers.
pub struct Api {
    pub profiles: Profiles,
    pub catalog: Catalog,
    pub policy: Policy,
    pub keys: ApiKeys,
    pub oidc: Option<oidc::Oidc>,
    limits: limits::Limits,
    /// The pipeline file and data folder served: an erasure opens the index for writing and
    /// announces itself on the segment change feed, as `profile-sync erase` does.
    pipeline: config::Pipeline,
    data_dir: PathBuf,
}

impl Api {
    pub fn new(
        pipeline: config::Pipeline,
        data_dir: PathBuf,
        profiles: Profiles,
        catalog: Catalog,
        policy: Policy,
        keys: ApiKeys,
        oidc: Option<oidc::Oidc>,
    ) -> Self {
        Self {
            limits: limits::Limits::new(&pipeline.config.serve.rate_limit),
            profiles,
            catalog,
            policy,
            keys,
            oidc,
            pipeline,
            data_dir,
        }
    }

    /// The index, opened for writing for one erasure (the server otherwise only reads it).
    fn writable_index(&self) -> Result<Arc<dyn SearchIndex>, IndexError> {
        let schemas = crate::pipeline::schemas(&self.pipeline)
            .map_err(|e| IndexError::Failed(e.to_string()))?;
        match crate::pipeline::open_placed_index(
            &self.pipeline,
            &self.data_dir,
            &schemas,
            crate::pipeline::IndexAccess::Write,
            self.profiles.placement.as_ref(),
        ) {
            Ok((_, index)) => Ok(index),
            Err(crate::pipeline::BuildError::Index(e)) => Err(e),
            Err(e) => Err(IndexError::Failed(e.to_string())),
        }
    }

    async fn announce_erasure(
        &self,
        user: Uuid,
        fence: i64,
    ) -> Result<(), crate::segment_changes::SegmentChangeError> {
        crate::pipeline::announce_erasures(&self.pipeline, &self.data_dir, &[(user, fence)]).await
    }
}

/// Serves the API on `listener` until the process ends.
pub async fn serve(api: Arc<Api>, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    axum::serve(listener, routes::router(api)).await
}

/// Binds `addr` (port 0 picks a free one).
pub async fn bind(addr: SocketAddr) -> std::io::Result<(tokio::net::TcpListener, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    Ok((listener, bound))
}
