//! The API's answers as types, and the OpenAPI document generated from them and from the
//! routes' annotations (utoipa), served at `/v1/openapi.json`: what a client generator or a
//! reader of the API sees is what the code answers.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use uuid::Uuid;

/// Where a stored profile stands.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProfileState {
    Live,
    /// Deleted by a DELETE event: only a version fence is left.
    Deleted,
    /// Crypto-shredded: the key is gone and only a tombstone is left.
    Erased,
}

impl ProfileState {
    pub fn name(self) -> &'static str {
        match self {
            ProfileState::Live => "live",
            ProfileState::Deleted => "deleted",
            ProfileState::Erased => "erased",
        }
    }
}

/// A profile as the caller's role may see it: every field it may not read is `***`, and pii
/// is always `***` (it is only ever revealed).
#[derive(Debug, Serialize, ToSchema)]
pub struct ProfileView {
    pub user_id: Uuid,
    pub version: i64,
    pub state: ProfileState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub erased_at: Option<DateTime<Utc>>,
    /// The schema's fields, masked per the role (live profiles only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub profile: Option<Map<String, Value>>,
    /// Country, subdivision, continent, residency zone (or `***`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub region: Option<Value>,
    /// The segment names (or `***`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub segments: Option<Value>,
}

/// The personalization read.
#[derive(Debug, Serialize, ToSchema)]
pub struct SegmentsView {
    pub user_id: Uuid,
    pub version: i64,
    pub state: ProfileState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub erased_at: Option<DateTime<Utc>>,
    /// Absent unless live.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segments: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub residency_zone: Option<String>,
}

/// Revealed fields: exactly those asked for (null where the profile has none).
#[derive(Debug, Serialize, ToSchema)]
pub struct Revealed {
    pub user_id: Uuid,
    pub version: i64,
    #[schema(value_type = Object)]
    pub fields: Map<String, Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Found {
    pub user_id: Uuid,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Erased {
    pub user_id: Uuid,
    pub erased: bool,
    /// The tombstone's version: events of this user up to it are refused.
    pub version_fence: i64,
    /// The id of the audit record's request.
    pub request_id: Uuid,
}

/// The caller as the API sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Caller {
    /// `api-key:<name>` or `oidc:<sub>`: the actor of its audit records.
    pub principal: String,
    pub role: String,
    /// What the role may do: read, reveal, search, lookup, audit, export, erase.
    pub actions: Vec<String>,
    /// The profile fields the role may reveal (with a reason).
    pub reveal: Vec<String>,
}

/// A user's consent: the current decision per purpose and every record, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConsentView {
    pub user_id: Uuid,
    pub current: std::collections::BTreeMap<String, bool>,
    /// `purpose`, `granted`, `policy_version`, `source`, `occurred_at`, `version`, `event_id`.
    #[schema(value_type = Vec<Object>)]
    pub history: Value,
}

/// An error (RFC 9457). `detail` names fields, roles and actions, never a value.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProblemDocument {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key (`profile-sync api-keys create`) or an OIDC token of the identity provider the pipeline file names",
                    ))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "profile-sync profile API",
        description = "Profiles, segments, reveals with a reason, lookups, search, and the privacy officer's audit, export and erase. Every request needs a bearer credential; what it may do is decided by its role (README, \"Serving profiles\")."
    ),
    paths(
        super::routes::me,
        super::routes::profiles::profile,
        super::routes::profiles::segments,
        super::routes::profiles::consent,
        super::routes::reveal::reveal,
        super::routes::reveal::lookup,
        super::routes::search::search,
        super::routes::privacy::audit,
        super::routes::privacy::export,
        super::routes::privacy::erase,
    ),
    components(schemas(ProblemDocument)),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
pub struct ApiDoc;

/// The document, as served.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
