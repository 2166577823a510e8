//! One home for AWS clients: the shared SDK configuration every service client is built
//! from, and one reading of what an AWS error means.
//!
//! - Region: `AWS_REGION`, else `AWS_DEFAULT_REGION`, else the instance's (`instance.json`
//!   from the metadata stage); a service reached through an ARN may override it per call.
//! - Endpoint: the SDK's own `AWS_ENDPOINT_URL_<SERVICE>` and `AWS_ENDPOINT_URL`, as AWS
//!   documents them; S3 with a custom endpoint uses path-style addressing.
//! - TLS: an https endpoint needs the system's CA store; without one, say so before the SDK
//!   fails every request with an obscure TLS error.
//! - Time: 3 s to connect, 30 s between reads, each attempt within the caller's bound; the
//!   SDK's standard 3 attempts, after which the caller's retry policy (`base::retry`)
//!   decides, logging each cause.
//! - Errors: [`classify`] sorts any SDK error into refused, throttled, transient or
//!   permanent, with a message that never carries the response body ([`kind_of`] is the
//!   reading itself, which the EC2 Query-API client (`ec2`) shares).
//! - Credentials: [`credentials::check`] asks the chain once, so that none at all is said
//!   within seconds, with why, instead of every request failing until the deadline.
//! - Endpoints: an `AWS_ENDPOINT_URL…` that is not an http(s) URL is bad usage at once.
//!
//! A new service is one line: `aws_sdk_ssm::Client::new(aws.sdk_config())`.

use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig, retry::RetryConfig, timeout::TimeoutConfig};
use aws_credential_types::provider::error::CredentialsError;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use crate::base::exit::{ExitCode, ExitStatus};
use crate::base::retry::{self, Deadline, RetryHint};
use crate::imds::facts::Facts;
use crate::state::StateDir;

pub mod credentials;
pub mod ec2;

#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    #[error("no AWS region: set AWS_REGION, or run the metadata stage on EC2")]
    NoRegion,
    #[error(
        "this machine has no CA certificates (install ca-certificates): {0} over https cannot be verified"
    )]
    NoCaCertificates(&'static str),
    /// An endpoint override that the SDK would refuse at every request.
    #[error("{variable}={value:?} {why}")]
    BadEndpoint {
        variable: String,
        value: String,
        why: String,
    },
    /// No source of the chain gave credentials: one line per cause.
    #[error("no AWS credentials for {service}:{}", causes.iter().map(|c| format!("\n  {c}")).collect::<String>())]
    NoCredentials {
        service: &'static str,
        causes: Vec<String>,
    },
}

impl ExitStatus for AwsError {
    fn exit_code(&self) -> ExitCode {
        match self {
            AwsError::NoRegion | AwsError::NoCaCertificates(_) => ExitCode::BadUserData,
            AwsError::BadEndpoint { .. } => ExitCode::Usage,
            AwsError::NoCredentials { .. } => ExitCode::NoPerm,
        }
    }
}

/// The shared configuration, loaded once per process (credentials included).
#[derive(Clone, Debug)]
pub struct Aws {
    shared: SdkConfig,
}

impl Aws {
    /// Loads region, credentials chain, timeouts and retries for a process that will call
    /// `services` (their endpoint names: `S3`, `SSM` …). `attempt_timeout` bounds each
    /// attempt of each request.
    /// `instance_region` is the fallback after the environment: the metadata stage knows it
    /// before `instance.json` exists; later stages pass [`instance_region`].
    pub async fn load(
        instance_region: Option<String>,
        services: &[&'static str],
        attempt_timeout: Duration,
    ) -> Result<Aws, AwsError> {
        // Before the SDK builds its connector: an endpoint it cannot use, or no CA store,
        // would fail every request until the deadline with an obscure error (and a debug
        // build panics).
        for &service in services {
            check_endpoints(service)?;
            check_ca_store(service, endpoint(service).as_deref())?;
        }
        let region = std::env::var("AWS_REGION")
            .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
            .ok()
            .filter(|r| !r.is_empty())
            .or(instance_region)
            .ok_or(AwsError::NoRegion)?;
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3))
            .read_timeout(Duration::from_secs(30))
            .operation_attempt_timeout(attempt_timeout)
            .build();
        let shared = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(region))
            .timeout_config(timeouts)
            // The SDK's default of 3 attempts per request: past them the caller retries
            // under base::retry and logs the cause each time, so a service that stays
            // down is reported as what it is, not only as a deadline.
            .retry_config(RetryConfig::standard().with_max_attempts(3))
            .load()
            .await;
        Ok(Aws { shared })
    }

    pub fn sdk_config(&self) -> &SdkConfig {
        &self.shared
    }

    /// The S3 client: path-style addressing when the endpoint is a custom one.
    pub fn s3(&self) -> aws_sdk_s3::Client {
        let endpoint = endpoint("S3");
        let mut config = aws_sdk_s3::config::Builder::from(&self.shared);
        if let Some(url) = endpoint {
            tracing::info!(
                endpoint = url,
                "using a custom S3 endpoint with path-style addressing"
            );
            config = config.endpoint_url(url).force_path_style(true);
        }
        aws_sdk_s3::Client::from_conf(config.build())
    }

    /// The default region's name.
    pub fn region(&self) -> &str {
        self.shared.region().map(|r| r.as_ref()).unwrap_or_default()
    }

    /// An SSM client for `region`. The SDK does not retry: the caller retries throttling
    /// under `base::retry::THROTTLED`, logging each, and counts every call it sends.
    pub fn ssm(&self, region: &str) -> aws_sdk_ssm::Client {
        let config = aws_sdk_ssm::config::Builder::from(&self.shared)
            .region(Region::new(region.to_string()))
            .retry_config(RetryConfig::disabled())
            .build();
        aws_sdk_ssm::Client::from_conf(config)
    }

    /// The Auto Scaling client (the lifecycle hook), retried by the caller as SSM's is.
    pub fn autoscaling(&self) -> aws_sdk_autoscaling::Client {
        let config = aws_sdk_autoscaling::config::Builder::from(&self.shared)
            .retry_config(RetryConfig::disabled())
            .build();
        aws_sdk_autoscaling::Client::from_conf(config)
    }

    /// The CloudFormation client, in `region` if given (a stack in another region).
    pub fn cloudformation(&self, region: Option<&str>) -> aws_sdk_cloudformation::Client {
        let mut config = aws_sdk_cloudformation::config::Builder::from(&self.shared)
            .retry_config(RetryConfig::disabled());
        if let Some(region) = region {
            config = config.region(Region::new(region.to_string()));
        }
        aws_sdk_cloudformation::Client::from_conf(config.build())
    }

    /// An SQS client, in `region` if given (the queue's, from its URL). The SDK's own
    /// retries; the watcher keeps polling whatever SQS answers.
    pub fn sqs(&self, region: Option<&str>) -> aws_sdk_sqs::Client {
        let mut config = aws_sdk_sqs::config::Builder::from(&self.shared);
        if let Some(region) = region {
            config = config.region(Region::new(region.to_string()));
        }
        aws_sdk_sqs::Client::from_conf(config.build())
    }

    /// A Secrets Manager client for `region`, retried by the caller as SSM's is.
    pub fn secretsmanager(&self, region: &str) -> aws_sdk_secretsmanager::Client {
        let config = aws_sdk_secretsmanager::config::Builder::from(&self.shared)
            .region(Region::new(region.to_string()))
            .retry_config(RetryConfig::disabled())
            .build();
        aws_sdk_secretsmanager::Client::from_conf(config)
    }
}

/// The instance's region from `instance.json`, written by the metadata stage (EC2's only:
/// another cloud's region is no AWS region).
pub fn instance_region(state: &StateDir) -> Option<String> {
    Facts::of(state)?.aws_region()
}

/// The endpoint override for a service (`S3` → `AWS_ENDPOINT_URL_S3`, else
/// `AWS_ENDPOINT_URL`), as the SDK reads it.
pub fn endpoint(service_env_name: &str) -> Option<String> {
    endpoint_and_variable(service_env_name).map(|(_, url)| url)
}

/// [`endpoint`], with the variable it came from.
pub fn endpoint_and_variable(service_env_name: &str) -> Option<(String, String)> {
    [
        format!("AWS_ENDPOINT_URL_{service_env_name}"),
        "AWS_ENDPOINT_URL".to_string(),
    ]
    .into_iter()
    .find_map(|v| {
        let url = std::env::var(&v).ok().filter(|u| !u.is_empty())?;
        Some((v, url))
    })
}

/// `value` with any `user:password@` before its host replaced by `…@`.
fn without_userinfo(value: &str) -> String {
    let (scheme, rest) = match value.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), value),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}…{}", &rest[at..]),
        None => value.to_string(),
    }
}

/// Each endpoint variable the SDK reads for `service` that is set: an http(s) URL with a
/// host, or bad usage naming the variable and what to write.
fn check_endpoints(service: &str) -> Result<(), AwsError> {
    for variable in [
        format!("AWS_ENDPOINT_URL_{service}"),
        "AWS_ENDPOINT_URL".to_string(),
    ] {
        let Some(raw) = std::env::var(&variable).ok().filter(|v| !v.is_empty()) else {
            continue;
        };
        // An endpoint may carry `user:password@`: never in a message.
        let value = without_userinfo(&raw);
        let why = if !raw.contains("://") {
            let bare = value.trim_end_matches('/');
            format!("needs a scheme: write http://{bare} (or https://)")
        } else {
            match reqwest::Url::parse(&raw) {
                Ok(url) if ["http", "https"].contains(&url.scheme()) && url.host().is_some() => {
                    continue;
                }
                Ok(_) => "is not an http:// or https:// URL with a host".to_string(),
                Err(e) => format!("is not a URL ({e})"),
            }
        };
        return Err(AwsError::BadEndpoint {
            variable,
            value,
            why,
        });
    }
    Ok(())
}

/// An https endpoint (AWS's own, or an https override) needs CA certificates.
fn check_ca_store(service: &'static str, endpoint: Option<&str>) -> Result<(), AwsError> {
    let https = endpoint.is_none_or(|url| url.starts_with("https://"));
    if https && rustls_native_certs::load_native_certs().certs.is_empty() {
        return Err(AwsError::NoCaCertificates(service));
    }
    Ok(())
}

/// What an AWS error means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Access denied, bad credentials, no such bucket: the same request fails again.
    Refused,
    /// Throttled (429, `SlowDown`, `ThrottlingException`, Auto Scaling's
    /// `ResourceContention` …): retry with jittered backoff.
    Throttled,
    /// Unreachable, timed out, 5xx: a later attempt may pass.
    Transient,
    /// Anything else the service said no to.
    Permanent,
}

/// An AWS failure: its kind, the service's error code when it gave one (callers match on
/// this, never on the message), and the text for messages (`Code: message`, or the cause
/// of a connection failure; never a response body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: Kind,
    pub code: Option<String>,
    pub message: String,
}

impl Failure {
    pub fn new(kind: Kind, code: Option<&str>, message: impl Into<String>) -> Failure {
        Failure {
            kind,
            code: code.map(str::to_string),
            message: message.into(),
        }
    }

    /// What happened: the code and the service's message, or the cause.
    pub fn why(&self) -> &str {
        &self.message
    }

    /// Whether the service answered with one of `codes`.
    pub fn is(&self, codes: &[&str]) -> bool {
        self.code.as_deref().is_some_and(|c| codes.contains(&c))
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Throttled and transient failures are retried under `base::retry`; the others are not.
impl RetryHint for Failure {
    fn retry_after(&self) -> Option<Duration> {
        match self.kind {
            Kind::Throttled | Kind::Transient => Some(Duration::ZERO),
            Kind::Refused | Kind::Permanent => None,
        }
    }
}

/// One AWS API call (`service` sorts its errors, `name` says it in logs: `ssm:GetParameters`,
/// `Auto Scaling CompleteLifecycleAction`): each attempt bounded by what is left of
/// `deadline`, throttled and transient failures retried under `policy` while the deadline
/// leaves room; the last failure otherwise (a refusal or a permanent answer at once).
pub async fn call<T, E, F, Fut>(
    service: &str,
    name: &str,
    policy: retry::Policy,
    deadline: Deadline,
    mut op: F,
) -> Result<T, Failure>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
{
    let attempt = || {
        let sent = op();
        async move {
            match tokio::time::timeout(deadline.remaining(), sent).await {
                Ok(Ok(answer)) => Ok(answer),
                Ok(Err(e)) => Err(classify(service, &e)),
                Err(_) => Err(Failure::new(Kind::Transient, None, "no answer (timed out)")),
            }
        }
    };
    retry::until_deadline(
        policy,
        deadline,
        |e: &Failure, attempt, sleep| {
            tracing::warn!("{name}: {e}; retrying in {sleep:.1?} (retry {attempt})")
        },
        attempt,
    )
    .await
}

/// Error codes that mean "not allowed", across services.
const REFUSED: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "NoSuchBucket",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AllAccessDisabled",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "ExpiredToken",
    "ExpiredTokenException",
    // EC2's: a missing permission, bad or unusable credentials.
    "UnauthorizedOperation",
    "AuthFailure",
    "OptInRequired",
];

/// Error codes that mean "slow down", across services.
const THROTTLED: &[&str] = &[
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "ProvisionedThroughputExceededException",
    "BandwidthLimitExceeded",
    // Auto Scaling: another update to the group (or instance) is pending. HTTP 500 in its
    // model, but a wait for the other update, whatever the status says.
    "ResourceContention",
];

/// Sorts an SDK error of `service` (for the message: "cannot reach S3: …"). The message names the code and the service's message, or the
/// innermost cause of a connection failure; never the response body.
pub fn classify<E>(service: &str, e: &SdkError<E, HttpResponse>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    if let Some(failure) = credentials_failure(e) {
        return failure;
    }
    let answer = e.as_service_error();
    let code = answer.and_then(|s| s.code()).map(str::to_string);
    let status = e.raw_response().map(|r| r.status().as_u16());
    let why = match (e, &code, answer.and_then(|s| s.message())) {
        (_, Some(code), Some(message)) => format!("{code}: {message}"),
        (_, Some(code), None) => code.clone(),
        (SdkError::TimeoutError(_), ..) => "timed out".into(),
        // Unparsable answers: the SDK's text would include the whole response.
        (SdkError::ServiceError(_), ..) => {
            format!("unexpected answer (HTTP {})", status.unwrap_or_default())
        }
        (SdkError::ResponseError(_), ..) => "unreadable answer".into(),
        // The connector's chain repeats itself in Display and Debug forms; its innermost
        // cause says it all ("Connection refused (os error 111)").
        (SdkError::DispatchFailure(_), ..) => format!("cannot reach {service}: {}", root_cause(e)),
        _ => DisplayErrorContext(e).to_string(),
    };
    Failure {
        kind: kind_of(code.as_deref(), status),
        code,
        message: why,
    }
}

/// What an answer means, from the service's error code and the HTTP status (either may be
/// missing): the one reading, for the SDK's errors ([`classify`]) and the Query-API
/// client's (`ec2`).
pub fn kind_of(code: Option<&str>, status: Option<u16>) -> Kind {
    match (code, status) {
        (Some(c), _) if REFUSED.contains(&c) => Kind::Refused,
        (Some(c), _) if THROTTLED.contains(&c) => Kind::Throttled,
        // A 403 whose body did not parse (moto answers the JSON APIs' denials in XML) is
        // a refusal all the same.
        (_, Some(403)) => Kind::Refused,
        (_, Some(429 | 503)) => Kind::Throttled,
        (_, Some(500..=599)) => Kind::Transient,
        (None, None) => Kind::Transient,
        _ => Kind::Permanent,
    }
}

/// A request that failed for want of credentials, in one line: the chain's own account
/// (a line per source) is for debug logs; `credentials::check` says why up front.
fn credentials_failure(e: &(dyn std::error::Error + 'static)) -> Option<Failure> {
    let mut cause = Some(e);
    let found = loop {
        let error = cause?;
        if let Some(found) = error.downcast_ref::<CredentialsError>() {
            break found;
        }
        cause = error.source();
    };
    tracing::debug!("credentials: {}", DisplayErrorContext(found));
    Some(match found {
        CredentialsError::CredentialsNotLoaded(_) => Failure::new(
            Kind::Refused,
            None,
            "no AWS credentials: no source of the SDK's chain gave any",
        ),
        CredentialsError::InvalidConfiguration(_) => Failure::new(
            Kind::Refused,
            None,
            format!("the AWS configuration is invalid: {}", root_cause(found)),
        ),
        _ => Failure::new(
            Kind::Transient,
            None,
            format!(
                "cannot get AWS credentials: {}",
                root_cause(found).lines().next().unwrap_or_default()
            ),
        ),
    })
}

/// The last error in `e`'s source chain.
pub(crate) fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_s3::operation::get_object::GetObjectError;
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::error::ErrorMetadata;

    fn answer(status: u16, code: Option<&str>) -> SdkError<GetObjectError, HttpResponse> {
        let mut meta = ErrorMetadata::builder();
        if let Some(code) = code {
            meta = meta.code(code).message("said the service");
        }
        let raw = HttpResponse::new(StatusCode::try_from(status).unwrap(), SdkBody::empty());
        SdkError::service_error(GetObjectError::generic(meta.build()), raw)
    }

    #[test]
    fn errors_are_sorted_by_code_then_status() {
        let said = |kind, c: &str| Failure::new(kind, Some(c), format!("{c}: said the service"));
        let cases = [
            (
                403,
                Some("AccessDenied"),
                said(Kind::Refused, "AccessDenied"),
            ),
            (
                400,
                Some("ThrottlingException"),
                said(Kind::Throttled, "ThrottlingException"),
            ),
            (503, Some("SlowDown"), said(Kind::Throttled, "SlowDown")),
            (
                503,
                None,
                Failure::new(Kind::Throttled, None, "unexpected answer (HTTP 503)"),
            ),
            (
                403,
                None,
                Failure::new(Kind::Refused, None, "unexpected answer (HTTP 403)"),
            ),
            (
                500,
                Some("InternalError"),
                said(Kind::Transient, "InternalError"),
            ),
            (404, Some("NoSuchKey"), said(Kind::Permanent, "NoSuchKey")),
            // Auto Scaling's "a pending update to this group": HTTP 500 in its model, a
            // wait and another try in any case.
            (
                500,
                Some("ResourceContention"),
                said(Kind::Throttled, "ResourceContention"),
            ),
            (
                400,
                Some("ResourceContention"),
                said(Kind::Throttled, "ResourceContention"),
            ),
            (
                400,
                Some("ParameterNotFound"),
                said(Kind::Permanent, "ParameterNotFound"),
            ),
        ];
        for (status, code, expected) in cases {
            assert_eq!(
                classify("S3", &answer(status, code)),
                expected,
                "{status} {code:?}"
            );
        }
        assert_eq!(
            without_userinfo("me:s3cret@127.0.0.1:9000"),
            "…@127.0.0.1:9000"
        );
        assert_eq!(
            without_userinfo("http://me:s3cret@host/p@x"),
            "http://…@host/p@x"
        );
        assert_eq!(
            without_userinfo("http://127.0.0.1:9000"),
            "http://127.0.0.1:9000"
        );
        let f = said(Kind::Permanent, "ParameterNotFound");
        assert!(f.is(&["ParameterVersionNotFound", "ParameterNotFound"]));
        assert!(!f.is(&["ResourceNotFoundException"]));
    }
}
