//! OIDC bearer tokens for the profile API: a JWT from the organisation's identity provider,
//! verified against its JWKS (a file, or a URL fetched at start and again when a token names a
//! key the server does not know), with issuer, audience, expiry and not-before checked. The
//! principal is the token's subject; its role is named by one claim. Only asymmetric keys are
//! accepted (a shared-secret `oct` key in the set is refused), so a token signed with HS256
//! using a public key as the secret cannot pass.

use super::Principal;
use crate::config::OidcConfig;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// A JWKS URL is fetched again for an unknown key id at most this often (a flood of tokens
/// with made-up key ids must not become a flood of requests to the identity provider).
const REFETCH_AFTER: Duration = Duration::from_secs(30);
/// Clock skew allowed on `exp` and `nbf`.
const LEEWAY_SECONDS: u64 = 60;

/// Where the keys come from.
#[derive(Debug, Clone)]
enum Source {
    File(PathBuf),
    Url(String),
}

/// Why a token was not accepted. The reason names no claim values.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Not a valid token for this API (answered 401).
    #[error("{0}")]
    Invalid(String),
    /// The key set cannot be read or fetched (answered 503).
    #[error("{0}")]
    Unavailable(String),
}

struct Keys {
    set: JwkSet,
    /// The file's modification time, or when the URL was fetched.
    file_modified: Option<SystemTime>,
    fetched: Instant,
}

/// The verifier: the configuration and the keys last read.
pub struct Oidc {
    config: OidcConfig,
    source: Source,
    keys: Mutex<Keys>,
    http: reqwest::Client,
}

impl Oidc {
    /// Reads the key set once, so that a wrong path or URL is reported at start. `base` is the
    /// folder a relative JWKS path is read from (the pipeline file's).
    pub async fn open(config: &OidcConfig, base: &Path) -> Result<Self, String> {
        for (name, value) in [("issuer", &config.issuer), ("audience", &config.audience)] {
            if value.trim().is_empty() {
                return Err(format!(
                    "`{name}` is empty: every token is checked against it"
                ));
            }
        }
        let source = if config.jwks.starts_with("https://") || config.jwks.starts_with("http://") {
            Source::Url(config.jwks.clone())
        } else {
            Source::File(base.join(&config.jwks))
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        let (set, file_modified) = load(&source, &http).await?;
        Ok(Self {
            config: config.clone(),
            source,
            keys: Mutex::new(Keys {
                set,
                file_modified,
                fetched: Instant::now(),
            }),
            http,
        })
    }

    /// The principal of a valid token; `is_role` says which role names exist.
    pub async fn verify(
        &self,
        token: &str,
        is_role: impl Fn(&str) -> bool,
    ) -> Result<Principal, TokenError> {
        let invalid = |why: &str| TokenError::Invalid(format!("the bearer token {why}"));
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| invalid("is not a signed JWT"))?;
        if !is_asymmetric(header.alg) {
            return Err(invalid(
                "is signed with a shared secret (HS256/384/512), which this API does not accept",
            ));
        }
        let kid = header
            .kid
            .clone()
            .ok_or_else(|| invalid("names no key (`kid`)"))?;
        let (key, key_alg) = match self.find(&kid).await? {
            Some(found) => found,
            None => {
                return Err(invalid(
                    "is signed with a key the identity provider does not list",
                ))
            }
        };
        if key_alg.is_some_and(|alg| alg != format!("{:?}", header.alg)) {
            return Err(invalid("names an algorithm its key is not for"));
        }
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECONDS;
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &key,
            &validation,
        )
        .map_err(|e| invalid(reason(e.kind())))?;
        let claims = data.claims;
        let subject = claims
            .get("sub")
            .and_then(|s| s.as_str())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| invalid("has no subject"))?;
        let role = match claims.get(&self.config.role_claim) {
            Some(serde_json::Value::String(r)) => Some(r.as_str()).filter(|r| is_role(r)),
            Some(serde_json::Value::Array(rs)) => {
                rs.iter().filter_map(|r| r.as_str()).find(|r| is_role(r))
            }
            _ => None,
        };
        Ok(Principal {
            name: format!("oidc:{subject}"),
            // No role of this API: authenticated, but every action is denied (403).
            role: role.unwrap_or_default().to_string(),
            id: format!("oidc:{}:{subject}", self.config.issuer),
        })
    }

    /// The decoding key of `kid`: from the keys held, re-read when the file changed, or
    /// fetched again (at most every [`REFETCH_AFTER`]) when the URL's set does not have it.
    /// With the key comes the algorithm the key set declares for it, if any.
    async fn find(&self, kid: &str) -> Result<Option<(DecodingKey, Option<String>)>, TokenError> {
        let reload = {
            let keys = self.keys.lock().expect("key set lock");
            match &self.source {
                Source::File(path) => modified(path) != keys.file_modified,
                Source::Url(_) => {
                    keys.set.find(kid).is_none() && keys.fetched.elapsed() >= REFETCH_AFTER
                }
            }
        };
        if reload {
            let (set, file_modified) = load(&self.source, &self.http)
                .await
                .map_err(TokenError::Unavailable)?;
            *self.keys.lock().expect("key set lock") = Keys {
                set,
                file_modified,
                fetched: Instant::now(),
            };
        }
        let keys = self.keys.lock().expect("key set lock");
        match keys.set.find(kid) {
            Some(jwk) => DecodingKey::from_jwk(jwk)
                .map(|key| Some((key, jwk.common.key_algorithm.map(|a| format!("{a:?}")))))
                .map_err(|_| {
                    TokenError::Invalid(
                        "the identity provider's key for this token cannot be used".into(),
                    )
                }),
            None => Ok(None),
        }
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Reads or fetches the key set and checks that it holds only public keys.
async fn load(
    source: &Source,
    http: &reqwest::Client,
) -> Result<(JwkSet, Option<SystemTime>), String> {
    let (text, where_, file_modified) = match source {
        Source::File(path) => (
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the JWKS file {}: {e}", path.display()))?,
            path.display().to_string(),
            modified(path),
        ),
        Source::Url(url) => {
            let response = http
                .get(url)
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .map_err(|e| format!("cannot fetch the JWKS from {url}: {e}"))?;
            let text = response
                .text()
                .await
                .map_err(|e| format!("cannot read the JWKS from {url}: {e}"))?;
            (text, url.clone(), None)
        }
    };
    let set: JwkSet = serde_json::from_str(&text)
        .map_err(|e| format!("{where_} is not a JWK set (RFC 7517): {e}"))?;
    if set
        .keys
        .iter()
        .any(|k| matches!(k.algorithm, AlgorithmParameters::OctetKey(_)))
    {
        return Err(format!(
            "{where_} holds a shared-secret (`oct`) key: the profile API accepts only tokens signed with public keys"
        ));
    }
    Ok((set, file_modified))
}

fn reason(kind: &jsonwebtoken::errors::ErrorKind) -> &'static str {
    use jsonwebtoken::errors::ErrorKind::*;
    match kind {
        ExpiredSignature => "has expired",
        ImmatureSignature => "is not valid yet",
        InvalidIssuer => "is from another issuer",
        InvalidAudience => "is for another audience",
        InvalidSignature => "has a signature that does not verify",
        MissingRequiredClaim(_) => "lacks a required claim (exp, iss, aud, sub)",
        InvalidAlgorithm | InvalidAlgorithmName | MissingAlgorithm => {
            "is signed with an algorithm its key does not allow"
        }
        _ => "cannot be verified",
    }
}

/// Algorithms a token may name: those of public keys.
fn is_asymmetric(alg: Algorithm) -> bool {
    !matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}
