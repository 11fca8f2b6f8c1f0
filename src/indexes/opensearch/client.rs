//! HTTP to OpenSearch through the `opensearch` crate's transport (connection pool, TLS,
//! credentials), with request bodies gzipped when the server accepts it, and whole-request
//! retries (429, 5xx, connection failures) on the one backoff policy of `src/retry.rs`.

use crate::indexes::IndexError;
use crate::retry::Backoff;
use flate2::write::GzEncoder;
use opensearch::auth::Credentials;
use opensearch::http::headers::{HeaderMap, HeaderValue, CONTENT_ENCODING, CONTENT_TYPE};
use opensearch::http::transport::{SingleNodeConnectionPool, Transport, TransportBuilder};
use opensearch::http::{Method, Url};
use serde_json::Value as Json;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub struct Client {
    transport: Transport,
    url: String,
    gzip: AtomicBool,
    backoff: Backoff,
}

/// A server answer: status and JSON body (`Null` when the body is not JSON).
pub struct Answer {
    pub status: u16,
    pub body: Json,
}

impl Answer {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// `type: reason` of an error answer, for administrative calls (no documents involved).
    pub fn error(&self) -> String {
        let e = &self.body["error"];
        match (e["type"].as_str(), e["reason"].as_str(), e.as_str()) {
            (Some(t), Some(r), _) => format!("{t}: {r} (HTTP {})", self.status),
            (_, _, Some(s)) => format!("{s} (HTTP {})", self.status),
            _ => format!("HTTP {}", self.status),
        }
    }

    pub fn error_type(&self) -> Option<&str> {
        self.body["error"]["type"].as_str()
    }
}

/// A request body: JSON, or NDJSON bytes for `_bulk`.
pub enum Body {
    Json(Json),
    NdJson(Vec<u8>),
}

impl Client {
    pub fn new(url: &str, credentials: Option<(String, String)>) -> Result<Self, IndexError> {
        let parsed = Url::parse(url).map_err(|e| {
            IndexError::Failed(format!(
                "index.url {url:?} is not a URL ({e}); use e.g. http://127.0.0.1:9200"
            ))
        })?;
        let mut builder = TransportBuilder::new(SingleNodeConnectionPool::new(parsed))
            .timeout(Duration::from_secs(60));
        if let Some((user, password)) = credentials {
            builder = builder.auth(Credentials::Basic(user, password));
        }
        let transport = builder
            .build()
            .map_err(|e| IndexError::Failed(format!("cannot set up the OpenSearch client: {e}")))?;
        Ok(Self {
            transport,
            url: url.to_string(),
            gzip: AtomicBool::new(false),
            backoff: Backoff::default(),
        })
    }

    pub fn set_gzip(&self, on: bool) {
        self.gzip.store(on, Ordering::Relaxed);
    }

    pub fn gzip(&self) -> bool {
        self.gzip.load(Ordering::Relaxed)
    }

    /// One request, no retries. Connection failures are `Unavailable` and name the server.
    pub async fn send_once(
        &self,
        method: Method,
        path: &str,
        body: Option<&Body>,
        gzip: bool,
    ) -> Result<Answer, IndexError> {
        let mut headers = HeaderMap::new();
        let bytes = match body {
            None => None,
            Some(Body::Json(j)) => Some(
                serde_json::to_vec(j)
                    .map_err(|e| IndexError::Failed(format!("cannot encode a request: {e}")))?,
            ),
            Some(Body::NdJson(b)) => {
                headers.insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/x-ndjson"),
                );
                Some(b.clone())
            }
        };
        let bytes = match bytes {
            Some(b) if gzip => {
                headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                let mut enc =
                    GzEncoder::new(Vec::with_capacity(b.len() / 4), flate2::Compression::fast());
                enc.write_all(&b)
                    .and_then(|_| enc.finish())
                    .map(Some)
                    .map_err(|e| IndexError::Failed(format!("cannot gzip a request: {e}")))?
            }
            other => other,
        };
        let response = self
            .transport
            .send(method, path, headers, None::<&()>, bytes, None)
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = response.status_code().as_u16();
        let text = response.text().await.map_err(|e| self.unreachable(e))?;
        let body = serde_json::from_str(&text).unwrap_or(Json::Null);
        Ok(Answer { status, body })
    }

    fn unreachable(&self, e: opensearch::Error) -> IndexError {
        IndexError::Unavailable(format!(
            "cannot reach OpenSearch at {} ({}); start it (`scripts/services start opensearch` for the test server) or fix index.url in the pipeline file",
            self.url,
            std::error::Error::source(&e)
                .map(|s| s.to_string())
                .unwrap_or_else(|| e.to_string())
        ))
    }

    /// A request retried on connection failures, 429 and 5xx, at most `attempts` times; other
    /// answers (including 4xx) are returned for the caller to judge.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Body>,
        attempts: u32,
    ) -> Result<Answer, IndexError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = self.send_once(method, path, body, self.gzip()).await;
            let retry = match &result {
                Err(e) => e.is_transient(),
                Ok(a) => a.status == 429 || a.status >= 500,
            };
            if !retry || attempt >= attempts {
                return match result {
                    // The error type only: a server's reason may quote a document.
                    Ok(a) if a.status == 429 || a.status >= 500 => {
                        Err(IndexError::Unavailable(format!(
                            "OpenSearch at {} kept answering {path} with HTTP {} ({}) after {attempt} attempts",
                            self.url,
                            a.status,
                            a.error_type().unwrap_or("no error type")
                        )))
                    }
                    other => other,
                };
            }
            let delay = self.backoff.delay(attempt);
            tracing::warn!(
                path,
                attempt,
                delay_ms = delay.as_millis() as u64,
                "OpenSearch request failed transiently; retrying"
            );
            tokio::time::sleep(delay).await;
        }
    }
}
