//! Search of the index (no PII in it), with counts by field.

use super::{answer, authorize, Answer};
use crate::indexes::IndexError;
use crate::serve::openapi::ProblemDocument;
use crate::serve::problem::Problem;
use crate::serve::{Action, Api};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use serde::Deserialize;
use std::sync::Arc;

#[derive(Deserialize, utoipa::IntoParams)]
pub(crate) struct SearchQuery {
    /// The query, e.g. `segments:high_value AND country:DE`.
    q: String,
    #[serde(default = "default_limit")]
    limit: usize,
    /// Fields to count the matches by, comma-separated (`segments,country`).
    #[serde(default)]
    agg: Option<String>,
    #[serde(default = "default_agg_size")]
    agg_size: usize,
}

fn default_limit() -> usize {
    20
}

fn default_agg_size() -> usize {
    20
}

fn index_problem(e: IndexError) -> Problem {
    match e {
        IndexError::Query(reason) => {
            Problem::bad_request(format!("the query is not valid: {reason}"))
        }
        e => {
            tracing::warn!(error = %e, "a search failed");
            Problem::unavailable("the index is unavailable; try again")
        }
    }
}

/// Queries the index (which holds no PII), with optional counts by field.
#[utoipa::path(
    get,
    path = "/v1/search",
    params(SearchQuery),
    responses(
        (status = 200, description = "`total`, `hits` (index documents; with residency zones each names its `zone`) and, with `agg`, `aggregations` (`field`, `total`, `buckets` of `key` and `count`, `other`)", body = Object),
        (status = 400, description = "The query or an aggregation field is not valid", body = ProblemDocument),
        (status = 401, description = "No valid credential", body = ProblemDocument),
        (status = 403, description = "The role may not do this", body = ProblemDocument),
        (status = 429, description = "Over a rate limit (see Retry-After)", body = ProblemDocument),
    )
)]
pub(crate) async fn search(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    query: Result<Query<SearchQuery>, QueryRejection>,
) -> Answer {
    authorize(&api, &headers, Action::Search).await?;
    let Ok(Query(query)) = query else {
        return Err(Problem::bad_request(
            "give the query as `q` (and `limit`, `agg_size`: numbers; `agg`: fields)",
        ));
    };
    let index = &api.profiles.index;
    let results = index
        .search(&query.q, query.limit.min(1000))
        .await
        .map_err(index_problem)?;
    let mut body = serde_json::to_value(&results).unwrap_or_default();
    if let Some(fields) = &query.agg {
        let mut aggregations = Vec::new();
        for field in fields.split(',').map(str::trim).filter(|f| !f.is_empty()) {
            aggregations.push(
                index
                    .aggregate(&query.q, field, query.agg_size.min(1000))
                    .await
                    .map_err(index_problem)?,
            );
        }
        body["aggregations"] = serde_json::to_value(&aggregations).unwrap_or_default();
    }
    Ok(answer(body))
}
