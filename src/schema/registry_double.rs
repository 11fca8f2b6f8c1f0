//! An in-memory test double of the Confluent Schema Registry REST subset profile-sync uses,
//! because no Confluent-compatible registry can be installed on the build machines. Served by
//! the hidden `profile-sync dev registry` command; tests and `pipelines/kafka-local.yaml` use it.
//!
//! Faithful to Confluent's documented responses: content type
//! `application/vnd.schemaregistry.v1+json`; errors as `{"error_code", "message"}` with 40401
//! (subject not found), 40402 (version not found), 40403 (schema not found), 42201 (invalid
//! schema), 409 (incompatible schema). Ids are global and the same schema text gets the same
//! id in every subject. Compatibility is BACKWARD (Confluent's default): the new schema must
//! read data written with the latest version. Nothing is persisted.

use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::Schema;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

#[derive(Default)]
struct Registry {
    /// id - 1 → schema text.
    schemas: Vec<String>,
    /// subject → ids of its versions (version n is at index n - 1).
    subjects: BTreeMap<String, Vec<u32>>,
}

type Shared = Arc<Mutex<Registry>>;

/// The router of the double, with an empty registry.
pub fn router() -> Router {
    let state: Shared = Arc::default();
    Router::new()
        .route("/schemas/ids/{id}", get(schema_by_id))
        .route("/subjects", get(subjects))
        .route("/subjects/{subject}/versions", post(register))
        .route("/subjects/{subject}/versions/{version}", get(version))
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(compatibility),
        )
        .route(
            "/compatibility/subjects/{subject}/versions",
            post(compatibility_any),
        )
        .fallback(|| async { error(StatusCode::NOT_FOUND, 404, "HTTP 404 Not Found") })
        .with_state(state)
}

/// Serves the double on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener) -> std::io::Result<()> {
    axum::serve(listener, router()).await
}

fn reply(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        body.to_string(),
    )
        .into_response()
}

fn error(status: StatusCode, code: u32, message: impl Into<String>) -> Response {
    reply(
        status,
        json!({"error_code": code, "message": message.into()}),
    )
}

fn subject_not_found(subject: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        40401,
        format!("Subject '{subject}' not found."),
    )
}

fn invalid_schema(reason: impl std::fmt::Display) -> Response {
    error(
        StatusCode::UNPROCESSABLE_ENTITY,
        42201,
        format!("Either the input schema or one of its references is invalid: {reason}"),
    )
}

/// The `schema` of a registration or compatibility request body, parsed.
#[allow(clippy::result_large_err)] // the error is the HTTP reply itself, built once per request
fn requested_schema(body: &str) -> Result<(String, Schema), Response> {
    let json: Value = serde_json::from_str(body).map_err(|_| {
        error(
            StatusCode::UNPROCESSABLE_ENTITY,
            422,
            "Unrecognized request body: expected JSON with a \"schema\" string",
        )
    })?;
    if let Some(t) = json.get("schemaType").and_then(Value::as_str) {
        if t != "AVRO" {
            return Err(invalid_schema(format!(
                "this test double only supports AVRO, not {t}"
            )));
        }
    }
    let text = json
        .get("schema")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid_schema("the request has no \"schema\" string"))?;
    let schema = Schema::parse_str(text).map_err(invalid_schema)?;
    Ok((text.to_string(), schema))
}

async fn schema_by_id(State(state): State<Shared>, Path(id): Path<String>) -> Response {
    let Ok(reg) = state.lock() else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            50001,
            "Error in the backend data store",
        );
    };
    match id
        .parse::<usize>()
        .ok()
        .and_then(|i| i.checked_sub(1))
        .and_then(|i| reg.schemas.get(i))
    {
        Some(text) => reply(StatusCode::OK, json!({"schema": text})),
        None => error(StatusCode::NOT_FOUND, 40403, "Schema not found"),
    }
}

async fn subjects(State(state): State<Shared>) -> Response {
    let Ok(reg) = state.lock() else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            50001,
            "Error in the backend data store",
        );
    };
    reply(
        StatusCode::OK,
        json!(reg.subjects.keys().collect::<Vec<_>>()),
    )
}

async fn version(
    State(state): State<Shared>,
    Path((subject, version)): Path<(String, String)>,
) -> Response {
    let Ok(reg) = state.lock() else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            50001,
            "Error in the backend data store",
        );
    };
    let Some(ids) = reg.subjects.get(&subject) else {
        return subject_not_found(&subject);
    };
    let index = if version == "latest" || version == "-1" {
        ids.len().checked_sub(1)
    } else {
        match version.parse::<usize>() {
            Ok(v) if v >= 1 => Some(v - 1),
            _ => {
                return error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    42202,
                    "The specified version is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\"",
                )
            }
        }
    };
    match index.and_then(|i| ids.get(i).map(|id| (i, *id))) {
        Some((i, id)) => reply(
            StatusCode::OK,
            json!({
                "subject": subject,
                "id": id,
                "version": i + 1,
                "schema": reg.schemas[id as usize - 1],
            }),
        ),
        None => error(StatusCode::NOT_FOUND, 40402, "Version not found."),
    }
}

async fn register(
    State(state): State<Shared>,
    Path(subject): Path<String>,
    body: String,
) -> Response {
    let (text, schema) = match requested_schema(&body) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Ok(mut reg) = state.lock() else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            50001,
            "Error in the backend data store",
        );
    };
    let canonical = schema.canonical_form();
    let same = |t: &String| {
        Schema::parse_str(t).is_ok_and(|s| s.canonical_form() == canonical && *t == text)
    };
    // Already a version of this subject: its id, nothing new.
    if let Some(ids) = reg.subjects.get(&subject) {
        if let Some(id) = ids.iter().find(|id| same(&reg.schemas[**id as usize - 1])) {
            return reply(StatusCode::OK, json!({"id": id}));
        }
        if let Some(latest) = ids.last() {
            let old = &reg.schemas[*latest as usize - 1];
            if !backward_compatible(old, &schema) {
                return error(
                    StatusCode::CONFLICT,
                    409,
                    format!("Schema being registered is incompatible with an earlier schema for subject \"{subject}\""),
                );
            }
        }
    }
    let id = match reg.schemas.iter().position(same) {
        Some(i) => i as u32 + 1,
        None => {
            reg.schemas.push(text);
            reg.schemas.len() as u32
        }
    };
    reg.subjects.entry(subject).or_default().push(id);
    reply(StatusCode::OK, json!({"id": id}))
}

fn backward_compatible(old_text: &str, new: &Schema) -> bool {
    Schema::parse_str(old_text).is_ok_and(|old| SchemaCompatibility::can_read(&old, new).is_ok())
}

fn compatibility_answer(
    reg: &Registry,
    subject: &str,
    version: Option<&str>,
    schema: &Schema,
) -> Response {
    let Some(ids) = reg.subjects.get(subject) else {
        // Without a version, Confluent treats a new subject as compatible.
        return match version {
            None => reply(StatusCode::OK, json!({"is_compatible": true})),
            Some(_) => subject_not_found(subject),
        };
    };
    let id = match version {
        None | Some("latest") | Some("-1") => ids.last().copied(),
        Some(v) => v
            .parse::<usize>()
            .ok()
            .and_then(|v| v.checked_sub(1))
            .and_then(|i| ids.get(i).copied()),
    };
    let Some(id) = id else {
        return error(StatusCode::NOT_FOUND, 40402, "Version not found.");
    };
    reply(
        StatusCode::OK,
        json!({"is_compatible": backward_compatible(&reg.schemas[id as usize - 1], schema)}),
    )
}

async fn compatibility(
    State(state): State<Shared>,
    Path((subject, version)): Path<(String, String)>,
    body: String,
) -> Response {
    let schema = match requested_schema(&body) {
        Ok((_, s)) => s,
        Err(r) => return r,
    };
    let Ok(reg) = state.lock() else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            50001,
            "Error in the backend data store",
        );
    };
    compatibility_answer(&reg, &subject, Some(&version), &schema)
}

async fn compatibility_any(
    State(state): State<Shared>,
    Path(subject): Path<String>,
    body: String,
) -> Response {
    let schema = match requested_schema(&body) {
        Ok((_, s)) => s,
        Err(r) => return r,
    };
    let Ok(reg) = state.lock() else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            50001,
            "Error in the backend data store",
        );
    };
    compatibility_answer(&reg, &subject, None, &schema)
}
