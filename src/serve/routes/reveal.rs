//! Audited reads of personal data: reveal (decrypt chosen fields with a reason) and lookup
//! (find a user by email). Each writes its audit record first and fails closed.

use super::profiles::live_record;
use super::{about, answer, authorize, require_reason, store_unavailable, Answer};
use crate::privacy::Actor;
use crate::serve::observe::RequestId;
use crate::serve::openapi::{Found, ProblemDocument, Revealed};
use crate::serve::problem::Problem;
use crate::serve::{Action, Api};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Extension, Path, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;
use serde_json::Value;
use std::sync::Arc;

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct RevealRequest {
    #[serde(default)]
    fields: Vec<String>,
    #[serde(default)]
    reason: String,
}

/// Decrypts the fields asked for, if the role may reveal each; the audit record is written
/// first, and nothing is revealed if it cannot be.
#[utoipa::path(
    post,
    path = "/v1/profiles/{user_id}/reveal",
    params(("user_id" = Uuid, Path, description = "The user's id")),
    request_body = RevealRequest,
    responses(
        (status = 200, description = "The revealed fields", body = Revealed),
        (status = 400, description = "No reason, no fields, or not a field", body = ProblemDocument),
        (status = 401, description = "No valid credential", body = ProblemDocument),
        (status = 403, description = "The role may not do this", body = ProblemDocument),
        (status = 404, description = "No live profile", body = ProblemDocument),
        (status = 429, description = "Over a rate limit (see Retry-After)", body = ProblemDocument),
        (status = 503, description = "The audit trail cannot be written: nothing revealed", body = ProblemDocument),
    )
)]
pub(crate) async fn reveal(
    State(api): State<Arc<Api>>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    Path(user): Path<String>,
    headers: HeaderMap,
    body: Result<Json<RevealRequest>, JsonRejection>,
) -> Answer {
    let principal = authorize(&api, &headers, Action::Reveal).await?;
    let user = about(&api, &user)?;
    let Ok(Json(request)) = body else {
        return Err(Problem::bad_request(
            "send {\"fields\": [...], \"reason\": \"...\"} as JSON",
        ));
    };
    require_reason(&request.reason, "a reveal")?;
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
    let (version, record) = match live_record(&api, user).await {
        Ok(found) => found,
        Err(Ok(state)) => {
            return Err(Problem::not_found(format!(
                "nothing to reveal: the profile is {}",
                state.state.name()
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
    Ok(answer(Revealed {
        user_id: user,
        version,
        fields,
    }))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct LookupRequest {
    #[serde(default)]
    email: String,
    #[serde(default)]
    reason: String,
}

/// Finds a user by email through the blind index; audited (it tells whether a person is a user).
#[utoipa::path(
    post,
    path = "/v1/profiles/lookup",
    request_body = LookupRequest,
    responses(
        (status = 200, description = "The user with that email", body = Found),
        (status = 400, description = "No reason, or not an email address", body = ProblemDocument),
        (status = 401, description = "No valid credential", body = ProblemDocument),
        (status = 403, description = "The role may not do this", body = ProblemDocument),
        (status = 404, description = "No live profile has that email", body = ProblemDocument),
        (status = 429, description = "Over a rate limit (see Retry-After)", body = ProblemDocument),
        (status = 503, description = "The audit trail cannot be written: not answered", body = ProblemDocument),
    )
)]
pub(crate) async fn lookup(
    State(api): State<Arc<Api>>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    headers: HeaderMap,
    body: Result<Json<LookupRequest>, JsonRejection>,
) -> Answer {
    let principal = authorize(&api, &headers, Action::Lookup).await?;
    let Ok(Json(request)) = body else {
        return Err(Problem::bad_request(
            "send {\"email\": \"...\", \"reason\": \"...\"} as JSON",
        ));
    };
    require_reason(&request.reason, "a lookup")?;
    if !request.email.contains('@') {
        return Err(Problem::bad_request("`email` is not an email address"));
    }
    let found = api
        .profiles
        .find_by_email(&request.email)
        .await
        .map_err(store_unavailable)?;
    let Some(user) = found else {
        return Err(Problem::not_found("no live profile has that email address"));
    };
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
    Ok(answer(Found { user_id: user }))
}
