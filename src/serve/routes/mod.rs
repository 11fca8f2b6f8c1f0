//! The routes of the profile API under `/v1`, each one: authenticate, authorize (the policy),
//! rate limit, then do the work. Reveals, lookups and exports write their audit record first
//! and fail closed: if the audit trail cannot be written, nothing is revealed.

pub(super) mod privacy;
pub(super) mod profiles;
pub(super) mod reveal;
pub(super) mod search;

use super::observe::observe;
use super::oidc::TokenError;
use super::openapi::{Caller, ProblemDocument};
use super::problem::Problem;
use super::{Action, Api, Principal};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::sync::Arc;
use uuid::Uuid;

type Answer = Result<Response, Problem>;

pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/v1/me", get(me))
        .route("/v1/profiles/{user_id}", get(profiles::profile))
        .route("/v1/profiles/{user_id}/segments", get(profiles::segments))
        .route("/v1/profiles/{user_id}/consent", get(profiles::consent))
        .route("/v1/profiles/{user_id}/reveal", post(reveal::reveal))
        .route("/v1/profiles/{user_id}/audit", get(privacy::audit))
        .route("/v1/profiles/{user_id}/export", post(privacy::export))
        .route("/v1/profiles/{user_id}/erase", post(privacy::erase))
        .route("/v1/profiles/lookup", post(reveal::lookup))
        .route("/v1/search", get(search::search))
        .route(
            "/v1/openapi.json",
            get(|| async { Json(super::openapi::document()) }),
        )
        .route_layer(axum::middleware::from_fn(observe))
        .with_state(api)
        .merge(super::console::router())
}

/// Who presented this bearer credential: an API key (`psk_…`), or else, when the pipeline file
/// names an identity provider, an OIDC token.
async fn authenticate(api: &Api, presented: &str) -> Result<Principal, Problem> {
    match &api.oidc {
        Some(oidc) if !presented.starts_with(super::api_keys::PREFIX) => oidc
            .verify(presented, |role| api.policy.has_role(role))
            .await
            .map_err(|e| match e {
                TokenError::Invalid(why) => Problem::new(StatusCode::UNAUTHORIZED, why),
                TokenError::Unavailable(why) => {
                    tracing::error!(error = %why, "the identity provider's keys cannot be read");
                    Problem::unavailable("the identity provider's keys cannot be read")
                }
            }),
        _ => api
            .keys
            .verify(presented)
            .map_err(|e| {
                tracing::error!(error = %e, "the API key file cannot be read");
                Problem::unavailable("the API key store cannot be read")
            })?
            .ok_or_else(Problem::unauthorized),
    }
}

/// The caller, if its bearer credential is valid and names a role.
async fn caller(api: &Api, headers: &HeaderMap) -> Result<Principal, Problem> {
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(Problem::unauthorized)?;
    let principal = authenticate(api, presented.trim()).await?;
    if principal.role.is_empty() {
        return Err(Problem::forbidden(
            "the token names no role of this API (see serve.oidc.role_claim)",
        ));
    }
    Ok(principal)
}

/// The caller, if its credential is valid, its role may take `action`, and it is within its
/// limits.
async fn authorize(api: &Api, headers: &HeaderMap, action: Action) -> Result<Principal, Problem> {
    let principal = caller(api, headers).await?;
    if !api.policy.allows(&principal.role, action) {
        return Err(Problem::forbidden(format!(
            "role `{}` may not {}",
            principal.role,
            action.as_str()
        )));
    }
    let strict = matches!(action, Action::Reveal | Action::Lookup);
    api.limits
        .check(&principal.id, &principal.role, strict)
        .map_err(too_many)?;
    Ok(principal)
}

/// Who the caller is and what its role may do: what a client (the console) shows and offers.
#[utoipa::path(
    get,
    path = "/v1/me",
    responses(
        (status = 200, description = "The caller, its role, its actions and the fields it may reveal", body = Caller),
        (status = 401, description = "No valid credential", body = ProblemDocument),
    )
)]
pub(crate) async fn me(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let principal = caller(&api, &headers).await?;
    api.limits
        .check(&principal.id, &principal.role, false)
        .map_err(too_many)?;
    let role = &principal.role;
    Ok(answer(Caller {
        principal: principal.name.clone(),
        actions: api
            .policy
            .actions(role)
            .iter()
            .map(|a| a.as_str().to_string())
            .collect(),
        reveal: api
            .catalog
            .top_level()
            .iter()
            .filter(|(name, class)| api.policy.reveals(role, name, *class))
            .map(|(name, _)| name.clone())
            .collect(),
        role: principal.role,
    }))
}

fn too_many(exceeded: super::limits::Exceeded) -> Problem {
    Problem {
        retry_after: Some(exceeded.seconds),
        ..Problem::new(StatusCode::TOO_MANY_REQUESTS, exceeded.what)
    }
}

/// The user a request is about, within the limit of requests about one user.
fn about(api: &Api, text: &str) -> Result<Uuid, Problem> {
    let user = user_id(text)?;
    api.limits.check_user(user).map_err(too_many)?;
    Ok(user)
}

fn user_id(text: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(text).map_err(|_| Problem::bad_request("the user id is not a UUID"))
}

fn store_unavailable(e: impl std::fmt::Display) -> Problem {
    tracing::warn!(error = %e, "the store failed a request");
    Problem::unavailable("the profile store is unavailable; try again")
}

/// A JSON answer.
fn answer(body: impl serde::Serialize) -> Response {
    Json(body).into_response()
}

/// A reason for the audit trail is required: `what` names the request (`a reveal`).
fn require_reason(reason: &str, what: &str) -> Result<(), Problem> {
    if reason.trim().is_empty() {
        return Err(Problem::bad_request(format!(
            "{what} needs a non-empty reason"
        )));
    }
    Ok(())
}
