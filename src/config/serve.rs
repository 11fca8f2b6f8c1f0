//! The profile API: OIDC, roles, API keys and rate limits.

use super::*;

/// The profile API's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// The API key file (hashes only), in the data folder unless absolute.
    #[serde(default = "default_api_keys")]
    pub api_keys: PathBuf,
    /// Roles by name; absent: the shipped roles (README, "Serving profiles").
    #[serde(default)]
    pub roles: Option<BTreeMap<String, RoleConfig>>,
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
    /// OIDC bearer tokens (JWT) accepted beside the API keys.
    #[serde(default)]
    pub oidc: Option<OidcConfig>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            api_keys: default_api_keys(),
            roles: None,
            rate_limit: RateLimitConfig::default(),
            oidc: None,
        }
    }
}

/// The identity provider whose tokens the profile API accepts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The `iss` every token must carry, exactly.
    pub issuer: String,
    /// The `aud` every token must carry (one of its audiences).
    pub audience: String,
    /// The provider's JWK set: an `https://` URL, or a file (relative to the pipeline file).
    pub jwks: String,
    /// The claim naming the caller's role: a string, or a list whose first role of this API
    /// counts.
    #[serde(default = "default_role_claim")]
    pub role_claim: String,
}

fn default_role_claim() -> String {
    "roles".into()
}

fn default_api_keys() -> PathBuf {
    PathBuf::from("api-keys.json")
}

/// A role: the actions it may take (`read`, `reveal`, `search`, `lookup`, `audit`), the field
/// classes or fields it reads as stored, and those it may reveal with a reason.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleConfig {
    #[serde(default)]
    pub actions: Vec<String>,
    #[serde(default)]
    pub read: Vec<String>,
    #[serde(default)]
    pub reveal: Vec<String>,
}

/// Requests per API key: a steady rate with a burst, and a stricter one for reveal and lookup.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    #[serde(default = "default_per_second")]
    pub per_second: u32,
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// Reveals and lookups per key per minute.
    #[serde(default = "default_reveal_per_minute")]
    pub reveal_per_minute: u32,
    /// Reveals and lookups per key per minute above which the rate is reported as unusual (a
    /// warning and `profile_sync_api_unusual_reveal_rate_total`); nothing is refused for it.
    #[serde(default = "default_unusual_reveals_per_minute")]
    pub unusual_reveals_per_minute: u32,
    /// Requests for one user's profile per second, from all clients together, and its burst.
    #[serde(default = "default_per_user_per_second")]
    pub per_user_per_second: u32,
    #[serde(default = "default_per_user_burst")]
    pub per_user_burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            per_second: default_per_second(),
            burst: default_burst(),
            reveal_per_minute: default_reveal_per_minute(),
            unusual_reveals_per_minute: default_unusual_reveals_per_minute(),
            per_user_per_second: default_per_user_per_second(),
            per_user_burst: default_per_user_burst(),
        }
    }
}

fn default_per_second() -> u32 {
    5_000
}
fn default_burst() -> u32 {
    10_000
}
fn default_reveal_per_minute() -> u32 {
    60
}
fn default_unusual_reveals_per_minute() -> u32 {
    20
}
fn default_per_user_per_second() -> u32 {
    100
}
fn default_per_user_burst() -> u32 {
    200
}
