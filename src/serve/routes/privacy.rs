//! The privacy officer's routes: a user's audit trail, export and erasure.

use super::{about, answer, authorize, require_reason, store_unavailable, Answer};
use crate::indexes::IndexError;
use crate::privacy::{Actor, PrivacyError};
use crate::serve::observe::RequestId;
use crate::serve::openapi::{Erased, ProblemDocument};
use crate::serve::problem::Problem;
use crate::serve::{Action, Api};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct ReasonRequest {
    #[serde(default)]
    reason: String,
}

/// The reason of a privacy request's body, which must give one.
fn reason_of(
    body: Result<Json<ReasonRequest>, JsonRejection>,
    what: &str,
) -> Result<String, Problem> {
    let Ok(Json(request)) = body else {
        return Err(Problem::bad_request("send {\"reason\": \"...\"} as JSON"));
    };
    require_reason(&request.reason, what)?;
    Ok(request.reason)
}

fn privacy_problem(e: PrivacyError) -> Problem {
    match e {
        PrivacyError::NotFound(_) => Problem::not_found("nothing is stored for this user id"),
        PrivacyError::Erased(_) => Problem::new(
            StatusCode::GONE,
            "the user was erased: their personal data no longer exists",
        ),
        e => {
            tracing::error!(error = %e, "a privacy request failed");
            Problem::unavailable(
                "the store, index or keys are unavailable, so nothing was done; try again",
            )
        }
    }
}

/// A privacy officer's request about one user: authorized for `action`, within the limits,
/// with a reason. The user and who acts, for the audit record.
async fn privacy_request(
    api: &Api,
    headers: &HeaderMap,
    user: &str,
    body: Result<Json<ReasonRequest>, JsonRejection>,
    action: Action,
    request_id: uuid::Uuid,
) -> Result<(uuid::Uuid, Actor), Problem> {
    let principal = authorize(api, headers, action).await?;
    let user = about(api, user)?;
    let reason = reason_of(body, &format!("an {}", action.as_str()))?;
    let actor = Actor {
        name: principal.name,
        reason,
        request_id,
    };
    Ok((user, actor))
}

/// Everything held about the user, PII decrypted. The audit record is written first: if it
/// cannot be, nothing is exported.
#[utoipa::path(
    post,
    path = "/v1/profiles/{user_id}/export",
    params(("user_id" = Uuid, Path, description = "The user's id")),
    request_body = ReasonRequest,
    responses(
        (status = 200, description = "The export document: profile with PII decrypted, derived fields, consent history, audit trail", body = Object),
        (status = 400, description = "No reason", body = ProblemDocument),
        (status = 401, description = "No valid credential", body = ProblemDocument),
        (status = 403, description = "The role may not do this", body = ProblemDocument),
        (status = 404, description = "Nothing is stored for this user", body = ProblemDocument),
        (status = 429, description = "Over a rate limit (see Retry-After)", body = ProblemDocument),
        (status = 503, description = "The audit trail, store or keys are unavailable: nothing exported", body = ProblemDocument),
    )
)]
pub(crate) async fn export(
    State(api): State<Arc<Api>>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    Path(user): Path<String>,
    headers: HeaderMap,
    body: Result<Json<ReasonRequest>, JsonRejection>,
) -> Answer {
    let (user, actor) =
        privacy_request(&api, &headers, &user, body, Action::Export, request_id).await?;
    let document = crate::privacy::export(&api.profiles, &api.catalog, user, &actor)
        .await
        .map_err(privacy_problem)?;
    Ok(answer(document))
}

/// Crypto-shreds the user, as `profile-sync erase` does: the key deleted, a tombstone, the
/// index document gone, an audit record, and the exits on the segment change feed.
#[utoipa::path(
    post,
    path = "/v1/profiles/{user_id}/erase",
    params(("user_id" = Uuid, Path, description = "The user's id")),
    request_body = ReasonRequest,
    responses(
        (status = 200, description = "Erased (idempotent)", body = Erased),
        (status = 400, description = "No reason", body = ProblemDocument),
        (status = 401, description = "No valid credential", body = ProblemDocument),
        (status = 403, description = "The role may not do this", body = ProblemDocument),
        (status = 404, description = "Nothing is stored for this user", body = ProblemDocument),
        (status = 409, description = "The embedded index is held by a running worker: nothing erased", body = ProblemDocument),
        (status = 429, description = "Over a rate limit (see Retry-After)", body = ProblemDocument),
        (status = 503, description = "A store, index or feed is unavailable; send again", body = ProblemDocument),
    )
)]
pub(crate) async fn erase(
    State(api): State<Arc<Api>>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    Path(user): Path<String>,
    headers: HeaderMap,
    body: Result<Json<ReasonRequest>, JsonRejection>,
) -> Answer {
    let (user, actor) =
        privacy_request(&api, &headers, &user, body, Action::Erase, request_id).await?;
    // The index is written by this erasure alone; an embedded index held by a running worker
    // refuses it before anything is erased.
    let index = api.writable_index().map_err(|e| match e {
        IndexError::InUse(_) => Problem::new(
            StatusCode::CONFLICT,
            "the embedded index is held by a running worker, so nothing was erased: send an ERASE event through the pipeline, or stop the worker and try again",
        ),
        e => {
            tracing::warn!(error = %e, "the index cannot be opened for an erasure");
            Problem::unavailable("the index is unavailable, so nothing was erased; try again")
        }
    })?;
    let profiles = crate::privacy::Profiles {
        index,
        ..api.profiles.clone()
    };
    let fence = profiles
        .erase_on_request(user, api.catalog.top_level_names(), &actor)
        .await
        .map_err(privacy_problem)?;
    if let Err(e) = api.announce_erasure(user, fence).await {
        // The erasure is done; the feed delivers at least once, so the caller asks again
        // (erasing is idempotent) until the exits are announced.
        tracing::error!(error = %e, "the erasure was not announced on the segment change feed");
        return Err(Problem::unavailable(
            "the user is erased, but the segment change feed could not be told; send the request again",
        ));
    }
    Ok(answer(Erased {
        user_id: user,
        erased: true,
        version_fence: fence,
        request_id,
    }))
}

/// The user's audit trail (privacy officer).
#[utoipa::path(
    get,
    path = "/v1/profiles/{user_id}/audit",
    params(("user_id" = Uuid, Path, description = "The user's id")),
    responses(
        (status = 200, description = "`{\"user_id\", \"audit\": [records]}`: actor, time, action, fields, reason, request id", body = Object),
        (status = 401, description = "No valid credential", body = ProblemDocument),
        (status = 403, description = "The role may not do this", body = ProblemDocument),
        (status = 429, description = "Over a rate limit (see Retry-After)", body = ProblemDocument),
    )
)]
pub(crate) async fn audit(
    State(api): State<Arc<Api>>,
    Path(user): Path<String>,
    headers: HeaderMap,
) -> Answer {
    authorize(&api, &headers, Action::Audit).await?;
    let user = about(&api, &user)?;
    let trail = api
        .profiles
        .store
        .audit_trail(user)
        .await
        .map_err(store_unavailable)?;
    Ok(answer(json!({"user_id": user, "audit": trail})))
}
