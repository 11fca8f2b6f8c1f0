//! AWS SDK plumbing shared by the DynamoDB store and the KMS key provider: how a client is
//! configured (default credential chain, optional region and endpoint override, no SDK
//! retries: `crate::retry::Backoff` is the one retry policy) and how an SDK error is classified.

use crate::retry::Backoff;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::config::ProvideCredentials;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use std::future::Future;
use std::time::Duration;

/// How many times one AWS call is tried before the adapter reports the service unavailable
/// (the pipeline then retries the whole batch, with the same backoff, for as long as it takes).
pub const ATTEMPTS: u32 = 6;

/// Where to reach an AWS service: both optional, the SDK default chain fills the gaps
/// (`AWS_REGION`, profile, IMDS).
#[derive(Debug, Clone, Default)]
pub struct Endpoint {
    pub region: Option<String>,
    pub endpoint: Option<String>,
}

/// Loads the SDK configuration: credentials from the default chain, never a retry of its own.
/// Fails, saying so, when the chain finds no credentials: the SDK would otherwise fall through
/// to the instance metadata service and every call would look like an unreachable endpoint.
pub async fn sdk_config(at: &Endpoint) -> Result<SdkConfig, String> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(2))
                .operation_attempt_timeout(Duration::from_secs(10))
                .build(),
        );
    if let Some(region) = &at.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(endpoint) = &at.endpoint {
        loader = loader.endpoint_url(endpoint.clone());
    }
    let config = loader.load().await;
    let found = match config.credentials_provider() {
        Some(provider) => provider.provide_credentials().await.map(|_| ()),
        None => {
            Err(aws_credential_types::provider::error::CredentialsError::not_loaded_no_source())
        }
    };
    found.map_err(|e| {
        format!(
            "no AWS credentials found ({}): set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run where a role provides them (ECS task role, EC2 instance profile, EKS web identity)",
            credentials_error_kind(&e)
        )
    })?;
    Ok(config)
}

/// The kind of a credentials error, without its message (it could name a profile's path).
fn credentials_error_kind(
    e: &aws_credential_types::provider::error::CredentialsError,
) -> &'static str {
    use aws_credential_types::provider::error::CredentialsError as E;
    match e {
        E::CredentialsNotLoaded(_) => "no provider of the default chain had any",
        E::ProviderTimedOut(_) => "the credentials provider timed out",
        E::InvalidConfiguration(_) => "the credentials configuration is invalid",
        E::ProviderError(_) => "a credentials provider failed",
        E::Unhandled(_) => "unexpected credentials error",
        _ => "credentials error",
    }
}

/// Runs `fut` to completion from synchronous code inside the multi-threaded runtime the CLI
/// uses (adapters are opened by synchronous builders). Clients made here stay bound to that
/// runtime, so they keep working afterwards.
pub fn block_on<F: Future>(fut: F) -> Result<F::Output, String> {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            Ok(tokio::task::block_in_place(|| handle.block_on(fut)))
        }
        _ => Err("the AWS adapters must be opened inside a multi-threaded tokio runtime".into()),
    }
}

/// What an AWS error means for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Throttled, timed out, unreachable or a 5xx: worth retrying.
    Transient(String),
    /// Anything else: retrying will not help.
    Permanent { code: String, message: String },
}

const THROTTLING: &[&str] = &[
    "ThrottlingException",
    "Throttling",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "LimitExceededException",
    "KMSInternalException",
    "InternalServerError",
    "InternalFailure",
    "ServiceUnavailable",
    "DependencyTimeoutException",
    "TransactionInProgressException",
];

/// Classifies an SDK error. The description names the error code and HTTP status only: AWS
/// messages can quote request values, which must never reach a log.
pub fn classify<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> Failure {
    let status = e.raw_response().map(|r| r.status().as_u16());
    let code = e.code().unwrap_or("unknown").to_string();
    match e {
        SdkError::TimeoutError(_) => Failure::Transient("timed out".into()),
        SdkError::DispatchFailure(_) => {
            Failure::Transient("unreachable (connection failed)".into())
        }
        SdkError::ResponseError(_) => {
            Failure::Transient(format!("unreadable response (HTTP {status:?})"))
        }
        _ if THROTTLING.contains(&code.as_str()) || status.is_some_and(|s| s >= 500) => {
            Failure::Transient(format!(
                "{code} (HTTP {})",
                status.map_or("-".into(), |s| s.to_string())
            ))
        }
        SdkError::ConstructionFailure(_) => Failure::Permanent {
            code: "request construction failed".into(),
            message: "check the region and endpoint settings".into(),
        },
        _ => Failure::Permanent {
            message: e.message().unwrap_or_default().to_string(),
            code,
        },
    }
}

/// Tries `call` up to [`ATTEMPTS`] times while `transient` says the error is worth retrying,
/// sleeping by [`Backoff`] in between; returns the last error otherwise.
pub async fn retrying<T, E, F, Fut>(
    what: &str,
    mut call: F,
    transient: impl Fn(&E) -> bool,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let backoff = Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_secs(2),
    };
    let mut attempt = 0;
    loop {
        match call().await {
            Ok(v) => return Ok(v),
            Err(e) if transient(&e) && attempt + 1 < ATTEMPTS => {
                attempt += 1;
                let delay = backoff.delay(attempt);
                tracing::debug!(call = what, error = %e, attempt, delay_ms = delay.as_millis() as u64, "AWS call failed transiently; retrying");
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e),
        }
    }
}
