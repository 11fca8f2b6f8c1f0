//! The routes of the profile API under `/v1`, each one: authenticate, authorize (the policy),
//! rate limit, then do the work. Reveals and lookups write their audit record first and fail
//! closed: if the audit trail cannot be written, nothing is revealed.

use super::oidc::TokenError;
use super::problem::Problem;
use super::{Action, Api, Principal};
use crate::indexes::IndexError;
use crate::privacy::{Actor, MASK};
use crate::schema::Classification;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use uuid::Uuid;

type Answer = Result<Response, Problem>;

pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/v1/profiles/{user_id}", get(profile))
        .route("/v1/profiles/{user_id}/segments", get(segments))
        .route("/v1/profiles/{user_id}/reveal", post(reveal))
        .route("/v1/profiles/{user_id}/audit", get(audit))
        .route("/v1/profiles/lookup", post(lookup))
        .route("/v1/search", get(search))
        .with_state(api)
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

/// The caller, if its credential is valid, its role may take `action`, and it is within its
/// limits.
async fn authorize(api: &Api, headers: &HeaderMap, action: Action) -> Result<Principal, Problem> {
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
    if !api.policy.allows(&principal.role, action) {
        return Err(Problem::forbidden(format!(
            "role `{}` may not {}",
            principal.role,
            action.as_str()
        )));
    }
    let strict = matches!(action, Action::Reveal | Action::Lookup);
    api.limits
        .check(&principal.id, strict)
        .map_err(|seconds| Problem {
            retry_after: Some(seconds),
            ..Problem::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "rate limit of this key reached{}",
                    if strict { " (reveal and lookup)" } else { "" }
                ),
            )
        })?;
    Ok(principal)
}

fn user_id(text: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(text).map_err(|_| Problem::bad_request("the user id is not a UUID"))
}

fn store_unavailable(e: impl std::fmt::Display) -> Problem {
    tracing::warn!(error = %e, "the store failed a request");
    Problem::unavailable("the profile store is unavailable; try again")
}

/// A JSON answer with the request's id in `x-request-id`.
fn answer(request_id: Uuid, body: Value) -> Response {
    let mut response = Json(body).into_response();
    if let Ok(v) = HeaderValue::from_str(&request_id.to_string()) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

/// A stored live record, or the answer for a user without one.
async fn live_record(
    api: &Api,
    user: Uuid,
) -> Result<(i64, crate::event::ProtectedRecord), Result<Value, Problem>> {
    let stored = api
        .profiles
        .store
        .get(user)
        .await
        .map_err(|e| Err(store_unavailable(e)))?
        .ok_or_else(|| Err(Problem::not_found("no profile for this user id")))?;
    match (stored.erased_at, stored.record) {
        (Some(at), _) => Err(Ok(
            json!({"user_id": user, "version": stored.version, "state": "erased", "erased_at": at}),
        )),
        (None, None) => Err(Ok(
            json!({"user_id": user, "version": stored.version, "state": "deleted"}),
        )),
        (None, Some(record)) => Ok((stored.version, record)),
    }
}

async fn profile(
    State(api): State<Arc<Api>>,
    Path(user): Path<String>,
    headers: HeaderMap,
) -> Answer {
    let principal = authorize(&api, &headers, Action::Read).await?;
    let user = user_id(&user)?;
    let request_id = Uuid::new_v4();
    let (version, record) = match live_record(&api, user).await {
        Ok(found) => found,
        Err(other) => return other.map(|body| answer(request_id, body)),
    };
    let role = &principal.role;
    let mut profile = serde_json::Map::new();
    for (name, class) in api.catalog.top_level() {
        let value = match class {
            Classification::Pii => record.encrypted.get(name).map(|_| Value::from(MASK)),
            _ => record.profile.get(name).map(|v| {
                if api.policy.reads(role, name, *class) {
                    v.clone()
                } else {
                    Value::from(MASK)
                }
            }),
        };
        if let Some(v) = value {
            profile.insert(name.clone(), v);
        }
    }
    let derived = |name: &str, value: Value| {
        if api.policy.reads(role, name, Classification::Derived) {
            value
        } else {
            Value::from(MASK)
        }
    };
    Ok(answer(
        request_id,
        json!({
            "user_id": user,
            "version": version,
            "state": "live",
            "profile": profile,
            "region": derived("residency_zone", serde_json::to_value(&record.region).unwrap_or_default()),
            "segments": derived("segments", json!(record.segments)),
        }),
    ))
}

async fn segments(
    State(api): State<Arc<Api>>,
    Path(user): Path<String>,
    headers: HeaderMap,
) -> Answer {
    let principal = authorize(&api, &headers, Action::Read).await?;
    if !api
        .policy
        .reads(&principal.role, "segments", Classification::Derived)
    {
        return Err(Problem::forbidden(format!(
            "role `{}` may not read segments",
            principal.role
        )));
    }
    let user = user_id(&user)?;
    let request_id = Uuid::new_v4();
    Ok(match live_record(&api, user).await {
        Ok((version, record)) => answer(
            request_id,
            json!({"user_id": user, "version": version, "state": "live", "segments": record.segments,
                   "residency_zone": record.region.residency_zone}),
        ),
        Err(other) => answer(request_id, other?),
    })
}

#[derive(Deserialize)]
struct RevealRequest {
    #[serde(default)]
    fields: Vec<String>,
    #[serde(default)]
    reason: String,
}

async fn reveal(
    State(api): State<Arc<Api>>,
    Path(user): Path<String>,
    headers: HeaderMap,
    body: Result<Json<RevealRequest>, JsonRejection>,
) -> Answer {
    let principal = authorize(&api, &headers, Action::Reveal).await?;
    let user = user_id(&user)?;
    let Ok(Json(request)) = body else {
        return Err(Problem::bad_request(
            "send {\"fields\": [...], \"reason\": \"...\"} as JSON",
        ));
    };
    if request.reason.trim().is_empty() {
        return Err(Problem::bad_request("a reveal needs a non-empty reason"));
    }
    if request.fields.is_empty() {
        return Err(Problem::bad_request("name the fields to reveal"));
    }
    for field in &request.fields {
        let Some(class) = api.catalog.class_of_top_level(field) else {
            return Err(Problem::bad_request(format!(
                "`{field}` is not a profile field"
            )));
        };
        if !api.policy.reveals(&principal.role, field, class) {
            return Err(Problem::forbidden(format!(
                "role `{}` may not reveal `{field}`",
                principal.role
            )));
        }
    }
    let request_id = Uuid::new_v4();
    let (version, record) = match live_record(&api, user).await {
        Ok(found) => found,
        Err(Ok(state)) => {
            return Err(Problem::not_found(format!(
                "nothing to reveal: the profile is {}",
                state["state"].as_str().unwrap_or("gone")
            )))
        }
        Err(Err(p)) => return Err(p),
    };
    let actor = Actor {
        name: principal.name.clone(),
        reason: request.reason.clone(),
        request_id,
    };
    // The audit record first; no record, nothing revealed.
    if let Err(e) = api
        .profiles
        .audit(&actor, "reveal", user, request.fields.clone())
        .await
    {
        tracing::error!(error = %e, "the audit trail cannot be written: reveal refused");
        return Err(Problem::unavailable(
            "the audit trail cannot be written, so nothing is revealed; try again",
        ));
    }
    let mut all = api.profiles.reveal(user, &record).await.map_err(|e| {
        tracing::warn!(error = %e, "a reveal failed");
        Problem::unavailable("the fields cannot be decrypted now")
    })?;
    let fields: serde_json::Map<String, Value> = request
        .fields
        .iter()
        .map(|f| (f.clone(), all.remove(f).unwrap_or(Value::Null)))
        .collect();
    Ok(answer(
        request_id,
        json!({"user_id": user, "version": version, "fields": fields}),
    ))
}

async fn audit(
    State(api): State<Arc<Api>>,
    Path(user): Path<String>,
    headers: HeaderMap,
) -> Answer {
    authorize(&api, &headers, Action::Audit).await?;
    let user = user_id(&user)?;
    let trail = api
        .profiles
        .store
        .audit_trail(user)
        .await
        .map_err(store_unavailable)?;
    Ok(answer(
        Uuid::new_v4(),
        json!({"user_id": user, "audit": trail}),
    ))
}

#[derive(Deserialize)]
struct LookupRequest {
    #[serde(default)]
    email: String,
    #[serde(default)]
    reason: String,
}

async fn lookup(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    body: Result<Json<LookupRequest>, JsonRejection>,
) -> Answer {
    let principal = authorize(&api, &headers, Action::Lookup).await?;
    let Ok(Json(request)) = body else {
        return Err(Problem::bad_request(
            "send {\"email\": \"...\", \"reason\": \"...\"} as JSON",
        ));
    };
    if request.reason.trim().is_empty() {
        return Err(Problem::bad_request("a lookup needs a non-empty reason"));
    }
    if !request.email.contains('@') {
        return Err(Problem::bad_request("`email` is not an email address"));
    }
    let index = api
        .profiles
        .keys
        .provider()
        .blind_index()
        .email(&request.email);
    let found = api
        .profiles
        .store
        .find_by_email_index(&index)
        .await
        .map_err(store_unavailable)?;
    let Some(user) = found else {
        return Err(Problem::not_found("no live profile has that email address"));
    };
    let request_id = Uuid::new_v4();
    let actor = Actor {
        name: principal.name,
        reason: request.reason,
        request_id,
    };
    if let Err(e) = api
        .profiles
        .audit(&actor, "lookup", user, vec!["email".into()])
        .await
    {
        tracing::error!(error = %e, "the audit trail cannot be written: lookup refused");
        return Err(Problem::unavailable(
            "the audit trail cannot be written, so the lookup is not answered; try again",
        ));
    }
    Ok(answer(request_id, json!({"user_id": user})))
}

#[derive(Deserialize)]
struct SearchQuery {
    q: String,
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    20
}

async fn search(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    query: Result<Query<SearchQuery>, QueryRejection>,
) -> Answer {
    authorize(&api, &headers, Action::Search).await?;
    let Ok(Query(query)) = query else {
        return Err(Problem::bad_request(
            "give the query as `q` (and `limit`, a number)",
        ));
    };
    let results = match api
        .profiles
        .index
        .search(&query.q, query.limit.min(1000))
        .await
    {
        Err(IndexError::Query(reason)) => {
            return Err(Problem::bad_request(format!(
                "the query is not valid: {reason}"
            )))
        }
        Err(e) => {
            tracing::warn!(error = %e, "a search failed");
            return Err(Problem::unavailable("the index is unavailable; try again"));
        }
        Ok(r) => r,
    };
    Ok(answer(
        Uuid::new_v4(),
        serde_json::to_value(&results).unwrap_or_default(),
    ))
}
