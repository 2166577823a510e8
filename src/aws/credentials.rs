//! Whether this process has AWS credentials at all, asked once before the first request,
//! and if not, why: one line per place the SDK's chain looks.
//!
//! Without the question, a machine with no credentials retries every request until the
//! caller's deadline (minutes for a sync) and logs the SDK's whole chain each time. With it,
//! the answer comes within [`WAIT`]:
//! - a source that gives credentials: done, the requests go ahead;
//! - none of them gives any (the chain's "not loaded"): the causes, read by bootstage
//!   itself, not parsed from the SDK's text: no source configured in the environment or
//!   profile files; IMDS turned off, disabled for the instance, unreachable, or answering
//!   that the instance has no role. IMDS unreachable or a role's credentials not given is
//!   asked again each second until [`WAIT`]; the rest is final at once;
//! - a source that is configured but slow or failing (a 5xx from STS, a timeout): left to
//!   the requests, which retry it and say so under the caller's deadline.

use std::time::Duration;

use aws_credential_types::provider::ProvideCredentials;
use aws_credential_types::provider::error::CredentialsError;

use crate::aws::{Aws, AwsError};
use crate::base::retry::Deadline;
use crate::imds::{self, Client, ImdsError};

/// How long the question may take, IMDS unreachable included.
pub const WAIT: Duration = Duration::from_secs(8);

/// What IMDS lists when the instance has a role: its name.
const ROLE_PATH: &str = "/latest/meta-data/iam/security-credentials/";

/// Ok when the chain gives credentials (or is configured and only slow); else
/// [`AwsError::NoCredentials`] naming each cause, for `service` (`S3` …).
pub async fn check(aws: &Aws, service: &'static str, within: Duration) -> Result<(), AwsError> {
    let Some(chain) = aws.sdk_config().credentials_provider() else {
        return Ok(());
    };
    let deadline = Deadline::after(within);
    loop {
        let error = match tokio::time::timeout(deadline.remaining(), chain.provide_credentials())
            .await
        {
            Ok(Ok(_)) => return Ok(()),
            // Slow, not absent: the requests will say what it is.
            Err(_) => return Ok(()),
            Ok(Err(e @ CredentialsError::InvalidConfiguration(_))) => {
                let why = crate::aws::root_cause(&e);
                return Err(AwsError::NoCredentials {
                    service,
                    causes: vec![format!("the AWS configuration is invalid: {why}")],
                });
            }
            Ok(Err(e @ CredentialsError::CredentialsNotLoaded(_))) => e,
            Ok(Err(e)) => {
                tracing::debug!(error = %crate::aws::root_cause(&e), "credentials: a source failed; the requests will retry it");
                return Ok(());
            }
        };
        // The SDK's own account of each source, for whoever asks for it.
        tracing::debug!(
            "credentials: {}",
            aws_smithy_types::error::display::DisplayErrorContext(&error)
        );
        let (causes, again) = diagnose(&deadline).await;
        if !again || deadline.remaining() < Duration::from_secs(1) {
            return Err(AwsError::NoCredentials { service, causes });
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Why no source gave credentials, one line each, and whether asking again may help.
async fn diagnose(deadline: &Deadline) -> (Vec<String>, bool) {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let mut causes = Vec::new();
    let configured: Vec<&str> = [
        "AWS_ACCESS_KEY_ID",
        "AWS_PROFILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ]
    .into_iter()
    .filter(|name| var(name).is_some())
    .collect();
    let files: Vec<String> = profile_files()
        .into_iter()
        .filter(|f| std::path::Path::new(f).exists())
        .collect();
    if configured.is_empty() && files.is_empty() {
        causes.push(
            "no credential source found (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, \
             AWS_PROFILE or ~/.aws/credentials, AWS_WEB_IDENTITY_TOKEN_FILE, or a \
             container's AWS_CONTAINER_CREDENTIALS_*)"
                .to_string(),
        );
    } else {
        let named = configured
            .iter()
            .map(|n| n.to_string())
            .chain(files)
            .collect::<Vec<_>>()
            .join(", ");
        causes.push(format!(
            "{named}: gave no credentials (BOOTSTAGE_LOG=debug shows the SDK's reason)"
        ));
    }
    let (role, again) = instance_role(deadline).await;
    causes.push(format!("the instance's role: {role}"));
    (causes, again)
}

/// The profile files the SDK reads: `AWS_CONFIG_FILE` and `AWS_SHARED_CREDENTIALS_FILE`,
/// else `~/.aws/config` and `~/.aws/credentials`.
fn profile_files() -> Vec<String> {
    let home = std::env::var("HOME").unwrap_or_default();
    [
        ("AWS_CONFIG_FILE", "config"),
        ("AWS_SHARED_CREDENTIALS_FILE", "credentials"),
    ]
    .into_iter()
    .map(|(var, name)| {
        std::env::var(var)
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| format!("{home}/.aws/{name}"))
    })
    .collect()
}

/// What IMDS says of the instance's role (as the SDK's last source would ask it), and
/// whether asking again may help.
async fn instance_role(deadline: &Deadline) -> (String, bool) {
    let endpoint = match imds::resolve_endpoint(None, |k| std::env::var(k).ok()) {
        Ok(endpoint) => endpoint,
        Err(why) if why.contains("AWS_EC2_METADATA_DISABLED") => {
            return (
                "IMDS is disabled (AWS_EC2_METADATA_DISABLED=true)".into(),
                false,
            );
        }
        Err(why) => return (why, false),
    };
    let client = Client::new(imds::Options {
        endpoint: endpoint.clone(),
        v2_only: false,
        request_timeout: Duration::from_secs(2),
        deadline: Deadline::after(deadline.remaining().min(Duration::from_secs(3))),
    });
    let answer = match client {
        Ok(client) => client.get(ROLE_PATH).await,
        Err(e) => Err(e),
    };
    match answer {
        Ok(names) if !String::from_utf8_lossy(&names).trim().is_empty() => {
            let name = String::from_utf8_lossy(&names);
            let name = name.lines().next().unwrap_or_default().trim();
            (
                format!("IMDS names the role {name:?} but gave no credentials for it"),
                true,
            )
        }
        Ok(_) | Err(ImdsError::NotFound(_)) => (
            "this instance has no IAM role (no instance profile): attach one whose policy \
             allows what bootstage calls (/usr/share/doc/bootstage/examples/iam-policy.json)"
                .into(),
            false,
        ),
        Err(e @ ImdsError::Disabled(_)) => (e.to_string(), false),
        Err(e) => (format!("IMDS at {endpoint} cannot be reached ({e})"), true),
    }
}
