//! Profile reads: the masked profile, the personalization read, and consent records.

use super::{about, answer, authorize, store_unavailable, Answer};
use crate::privacy::MASK;
use crate::schema::Classification;
use crate::serve::openapi::{
    ConsentView, ProblemDocument, ProfileState, ProfileView, SegmentsView,
};
use crate::serve::problem::Problem;
use crate::serve::{Action, Api};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use serde_json::{json, Value};
use std::sync::Arc;
use uuid::Uuid;

/// A user whose profile is not live: deleted (a fence) or erased (a tombstone).
pub(super) struct Gone {
    pub version: i64,
    pub state: ProfileState,
    pub erased_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// A stored live record, or what is left of a profile that is not live.
pub(super) async fn live_record(
    api: &Api,
    user: Uuid,
) -> Result<(i64, crate::event::ProtectedRecord), Result<Gone, Problem>> {
    let stored = api
        .profiles
        .store
        .get(user)
        .await
        .map_err(|e| Err(store_unavailable(e)))?
        .ok_or_else(|| Err(Problem::not_found("no profile for this user id")))?;
    let gone = |state| Gone {
        version: stored.version,
        state,
        erased_at: stored.erased_at,
    };
    match (stored.erased_at, &stored.record) {
        (Some(_), _) => Err(Ok(gone(ProfileState::Erased))),
        (None, None) => Err(Ok(gone(ProfileState::Deleted))),
        (None, Some(_)) => Ok((stored.version, stored.record.expect("live"))),
    }
}

/// The profile, every field the caller's role may not read masked.
#[utoipa::path(
    get,
    path = "/v1/profiles/{user_id}",
    params(("user_id" = Uuid, Path, description = "The user's id")),
    responses(
        (status = 200, description = "The profile as the role may see it", body = ProfileView),
        (status = 401, description = "No valid credential", body = ProblemDocument),
        (status = 403, description = "The role may not read profiles", body = ProblemDocument),
        (status = 404, description = "No profile for this user id", body = ProblemDocument),
        (status = 429, description = "Over a rate limit (see Retry-After)", body = ProblemDocument),
    )
)]
pub(crate) async fn profile(
    State(api): State<Arc<Api>>,
    Path(user): Path<String>,
    headers: HeaderMap,
) -> Answer {
    let principal = authorize(&api, &headers, Action::Read).await?;
    let user = about(&api, &user)?;
    let (version, record) = match live_record(&api, user).await {
        Ok(found) => found,
        Err(other) => {
            let gone = other?;
            return Ok(answer(ProfileView {
                user_id: user,
                version: gone.version,
                state: gone.state,
                erased_at: gone.erased_at,
                profile: None,
                region: None,
                segments: None,
            }));
        }
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
    Ok(answer(ProfileView {
        user_id: user,
        version,
        state: ProfileState::Live,
        erased_at: None,
        profile: Some(profile),
        region: Some(derived(
            "residency_zone",
            serde_json::to_value(&record.region).unwrap_or_default(),
        )),
        segments: Some(derived("segments", json!(record.segments))),
    }))
}

/// Segments, residency zone and version: the personalization read.
#[utoipa::path(
    get,
    path = "/v1/profiles/{user_id}/segments",
    params(("user_id" = Uuid, Path, description = "The user's id")),
    responses(
        (status = 200, description = "The user's segments", body = SegmentsView),
        (status = 401, description = "No valid credential", body = ProblemDocument),
        (status = 403, description = "The role may not read segments", body = ProblemDocument),
        (status = 404, description = "No profile for this user id", body = ProblemDocument),
        (status = 429, description = "Over a rate limit (see Retry-After)", body = ProblemDocument),
    )
)]
pub(crate) async fn segments(
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
    let user = about(&api, &user)?;
    Ok(answer(match live_record(&api, user).await {
        Ok((version, record)) => SegmentsView {
            user_id: user,
            version,
            state: ProfileState::Live,
            erased_at: None,
            segments: Some(record.segments),
            residency_zone: Some(record.region.residency_zone),
        },
        Err(other) => {
            let gone = other?;
            SegmentsView {
                user_id: user,
                version: gone.version,
                state: gone.state,
                erased_at: gone.erased_at,
                segments: None,
                residency_zone: None,
            }
        }
    }))
}

/// The user's consent records (purposes, decisions, policy versions, dates: no PII), and the
/// current decision per purpose.
#[utoipa::path(
    get,
    path = "/v1/profiles/{user_id}/consent",
    params(("user_id" = Uuid, Path, description = "The user's id")),
    responses(
        (status = 200, description = "Current decisions and every record", body = ConsentView),
        (status = 401, description = "No valid credential", body = ProblemDocument),
        (status = 403, description = "The role may not read profiles", body = ProblemDocument),
        (status = 429, description = "Over a rate limit (see Retry-After)", body = ProblemDocument),
    )
)]
pub(crate) async fn consent(
    State(api): State<Arc<Api>>,
    Path(user): Path<String>,
    headers: HeaderMap,
) -> Answer {
    authorize(&api, &headers, Action::Read).await?;
    let user = about(&api, &user)?;
    let history = api
        .profiles
        .store
        .consent_history(user)
        .await
        .map_err(store_unavailable)?;
    Ok(answer(ConsentView {
        user_id: user,
        current: crate::stores::consent_state(&history),
        history: serde_json::to_value(&history).unwrap_or_default(),
    }))
}
