//! Every request of the profile API gets an id (in the `x-request-id` header of its answer, its
//! log line and its audit records), one log line and its place in the per-route metrics. Routes
//! are named by their template (`/v1/profiles/{user_id}`), so neither a user id nor a query
//! string ever reaches a log or a metric label.

use crate::telemetry;
use axum::extract::{MatchedPath, Request};
use axum::http::header::CACHE_CONTROL;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use std::time::Instant;
use uuid::Uuid;

/// The id of the request being answered; handlers put it into the audit records they write.
#[derive(Debug, Clone, Copy)]
pub struct RequestId(pub Uuid);

pub async fn observe(mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = Uuid::new_v4();
    request.extensions_mut().insert(RequestId(id));
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = request.method().as_str().to_string();
    let mut response = next.run(request).await;
    let status = response.status().as_u16();
    let seconds = started.elapsed().as_secs_f64();
    metrics::counter!(telemetry::API_REQUESTS, "route" => route.clone(), "method" => method.clone(), "status" => status.to_string())
        .increment(1);
    metrics::histogram!(telemetry::API_REQUEST_SECONDS, "route" => route.clone(), "method" => method.clone())
        .record(seconds);
    tracing::info!(request_id = %id, %method, %route, status, ms = seconds * 1000.0, "api request");
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&id.to_string()) {
        headers.insert("x-request-id", v);
    }
    // Answers may hold revealed personal data: no cache keeps them.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
