//! `profile-sync serve`: the profile API. Every request is authenticated (an API key, or an
//! OIDC token from the identity provider the pipeline file names, as a bearer token), authorized at one policy point ([`policy::Policy`]: roles over actions,
//! field classes and fields), rate limited per key, and every reveal or lookup is written to
//! the audit trail under the authenticated principal before anything is answered. Errors are
//! RFC 9457 problem documents that name no values.

pub mod api_keys;
mod limits;
pub mod oidc;
pub mod policy;
mod problem;
mod routes;

pub use api_keys::{ApiKeys, Principal};
pub use policy::{shipped_roles, Action, Policy};

use crate::config::RateLimitConfig;
use crate::privacy::Profiles;
use crate::schema::Catalog;
use std::net::SocketAddr;
use std::sync::Arc;

/// Everything a request may need, shared by the handlers.
pub struct Api {
    pub profiles: Profiles,
    pub catalog: Catalog,
    pub policy: Policy,
    pub keys: ApiKeys,
    pub oidc: Option<oidc::Oidc>,
    limits: limits::Limits,
}

impl Api {
    pub fn new(
        profiles: Profiles,
        catalog: Catalog,
        policy: Policy,
        keys: ApiKeys,
        oidc: Option<oidc::Oidc>,
        rate: &RateLimitConfig,
    ) -> Self {
        Self {
            profiles,
            catalog,
            policy,
            keys,
            oidc,
            limits: limits::Limits::new(rate),
        }
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
