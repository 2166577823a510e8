//! The two EC2 calls bootstage makes, over EC2's Query API without the SDK's EC2 crate
//! (which would cost more than a third of a CI run to compile): `CreateTags` (the
//! instance's status tags) and `DescribeInstances` (`bootstage fleet`).
//!
//! - The request: a form-encoded POST (`Action=…&Version=2016-11-15&…`) to the EC2
//!   endpoint, signed with SigV4 (`aws-sigv4`, service `ec2`) with the credentials of the
//!   shared configuration's chain (`Aws`), in its region.
//! - Endpoint: `AWS_ENDPOINT_URL_EC2`, else `AWS_ENDPOINT_URL`, as the SDK reads them
//!   (checked by `Aws::load` for `EC2`), else `https://ec2.{region}.amazonaws.com`
//!   (`.amazonaws.com.cn` in China).
//! - Bounds: each attempt within `attempt_timeout` and what is left of the caller's
//!   deadline; throttled and transient failures retried under `base::retry` until the
//!   deadline; an answer's body at most [`MAX_ANSWER`].
//! - Errors: EC2's `<Response><Errors><Error><Code/><Message/>` read into an
//!   `aws::Failure`, sorted by `aws::kind_of` as every AWS error is; a message carries the
//!   code and EC2's message, never the body of an answer.
//! - Answers: XML read with `aws-smithy-xml`, only the fields bootstage uses.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::ProvideCredentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_credential_types::provider::error::CredentialsError;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use aws_smithy_xml::decode::{Document, ScopedDecoder, XmlDecodeError, try_data};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};

use crate::aws::{self, Aws, AwsError, Failure, Kind};
use crate::base::http::{HttpsClient, source_chain};
use crate::base::retry::{self, Deadline};

/// The Query API's version.
pub const VERSION: &str = "2016-11-15";
/// `DescribeInstances` answers at most this many instances a page (and at least 5).
pub const MAX_PAGE: u32 = 1000;
pub const MIN_PAGE: u32 = 5;
/// The largest answer read (a page of 1,000 instances is a few MB).
pub const MAX_ANSWER: usize = 64 * 1024 * 1024;
/// Connecting, within each attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// One instance, as `DescribeInstances` says it (what `fleet` shows).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    /// `pending`, `running`, `stopping`, `stopped`, `shutting-down`, `terminated`.
    pub state: String,
    pub availability_zone: String,
    /// As EC2 gives it (ISO 8601, UTC).
    pub launch_time: String,
    pub tags: BTreeMap<String, String>,
}

/// A `DescribeInstances` filter: `tag:Name`, `tag-key`, `instance-state-name` …
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub name: String,
    pub values: Vec<String>,
}

/// An EC2 client for one region.
pub struct Ec2 {
    client: HttpsClient,
    url: http::Uri,
    region: String,
    credentials: Option<SharedCredentialsProvider>,
    /// The chain's last answer, reused until a minute before it expires (the chain itself
    /// does not cache: an instance role's would be asked of IMDS for every page).
    cached: tokio::sync::Mutex<Option<aws_credential_types::Credentials>>,
    attempt_timeout: Duration,
    calls: AtomicUsize,
}

impl Ec2 {
    /// EC2 in `aws`'s region (`Aws::load` was given `EC2` among its services, so the
    /// endpoint overrides were checked). `attempt_timeout` bounds each attempt.
    pub fn new(aws: &Aws, attempt_timeout: Duration) -> Result<Ec2, AwsError> {
        let region = aws.region().to_string();
        let (variable, raw) = match aws::endpoint("EC2") {
            Some(url) => ("AWS_ENDPOINT_URL_EC2", url),
            None => ("", default_endpoint(&region)),
        };
        let url: http::Uri = raw.parse().map_err(|e| AwsError::BadEndpoint {
            variable: variable.into(),
            value: String::new(),
            why: format!("is not a URL ({e})"),
        })?;
        let client = crate::base::http::client(CONNECT_TIMEOUT)
            .map_err(|_| AwsError::NoCaCertificates("EC2"))?;
        Ok(Ec2 {
            client,
            url,
            region,
            credentials: aws.sdk_config().credentials_provider(),
            cached: tokio::sync::Mutex::new(None),
            attempt_timeout,
            calls: AtomicUsize::new(0),
        })
    }

    /// The requests sent so far, retries included.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::Relaxed)
    }

    /// `CreateTags` on `resource` (an instance id): adds the tags, or overwrites their
    /// values.
    pub async fn create_tags(
        &self,
        resource: &str,
        tags: &[(String, String)],
        deadline: Deadline,
    ) -> Result<(), Failure> {
        let mut params = vec![("ResourceId.1".to_string(), resource.to_string())];
        for (i, (key, value)) in tags.iter().enumerate() {
            params.push((format!("Tag.{}.Key", i + 1), key.clone()));
            params.push((format!("Tag.{}.Value", i + 1), value.clone()));
        }
        self.call("CreateTags", &params, deadline).await.map(drop)
    }

    /// Every instance `filters` select, page by page (`page` instances each, from
    /// [`MIN_PAGE`] to [`MAX_PAGE`]; `NextToken` to the end).
    pub async fn describe_instances(
        &self,
        filters: &[Filter],
        page: u32,
        deadline: Deadline,
    ) -> Result<Vec<Instance>, Failure> {
        let mut base = vec![(
            "MaxResults".to_string(),
            page.clamp(MIN_PAGE, MAX_PAGE).to_string(),
        )];
        for (i, filter) in filters.iter().enumerate() {
            base.push((format!("Filter.{}.Name", i + 1), filter.name.clone()));
            for (j, value) in filter.values.iter().enumerate() {
                base.push((format!("Filter.{}.Value.{}", i + 1, j + 1), value.clone()));
            }
        }
        let mut found = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut params = base.clone();
            if let Some(token) = &token {
                params.push(("NextToken".into(), token.clone()));
            }
            let body = self.call("DescribeInstances", &params, deadline).await?;
            let (instances, next) = instances(&body).map_err(|e| {
                Failure::new(
                    Kind::Permanent,
                    None,
                    format!("ec2:DescribeInstances: unreadable answer ({e})"),
                )
            })?;
            found.extend(instances);
            match next {
                // A token that comes back again would page forever.
                Some(next) if token.as_ref() != Some(&next) => token = Some(next),
                _ => return Ok(found),
            }
        }
    }

    /// One action, retried under `base::retry::THROTTLED` until `deadline`; its answer's
    /// body on success.
    async fn call(
        &self,
        action: &str,
        params: &[(String, String)],
        deadline: Deadline,
    ) -> Result<String, Failure> {
        let mut form = format!("Action={action}&Version={VERSION}");
        for (key, value) in params {
            form.push('&');
            form.push_str(&encode(key));
            form.push('=');
            form.push_str(&encode(value));
        }
        let body = Bytes::from(form);
        let name = format!("ec2:{action}");
        retry::until_deadline(
            retry::THROTTLED,
            deadline,
            |e: &Failure, attempt, sleep| {
                tracing::warn!("{name}: {e}; retrying in {sleep:.1?} (retry {attempt})")
            },
            || async {
                let limit = self.attempt_timeout.min(deadline.remaining());
                match tokio::time::timeout(limit, self.attempt(body.clone())).await {
                    Ok(answer) => answer,
                    Err(_) => Err(Failure::new(
                        Kind::Transient,
                        None,
                        format!("no answer from EC2 within {limit:.1?}"),
                    )),
                }
            },
        )
        .await
    }

    async fn attempt(&self, body: Bytes) -> Result<String, Failure> {
        let credentials = self.credentials().await?;
        let identity: Identity = credentials.into();
        let host = self
            .url
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_default();
        let content_type = "application/x-www-form-urlencoded; charset=utf-8";
        let url = self.url.to_string();
        let headers = [("content-type", content_type), ("host", host.as_str())];
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("ec2")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| Failure::new(Kind::Permanent, None, format!("cannot sign: {e}")))?
            .into();
        let signable = SignableRequest::new(
            "POST",
            &url,
            headers.iter().copied(),
            SignableBody::Bytes(&body),
        )
        .map_err(|e| Failure::new(Kind::Permanent, None, format!("cannot sign: {e}")))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| Failure::new(Kind::Permanent, None, format!("cannot sign: {e}")))?
            .into_parts();
        let mut request = http::Request::post(&url)
            .header("content-type", content_type)
            .header("host", &host)
            .header(
                "user-agent",
                concat!("bootstage/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(body))
            .map_err(|e| Failure::new(Kind::Permanent, None, format!("bad request: {e}")))?;
        instructions.apply_to_request_http1x(&mut request);
        self.calls.fetch_add(1, Ordering::Relaxed);
        let response = self.client.request(request).await.map_err(|e| {
            Failure::new(
                Kind::Transient,
                None,
                format!("cannot reach EC2: {e}: {}", source_chain(&e)),
            )
        })?;
        let status = response.status().as_u16();
        let read = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map(|b| b.to_bytes());
        let Ok(bytes) = read else {
            return Err(Failure::new(
                Kind::Transient,
                None,
                format!("unreadable answer (HTTP {status})"),
            ));
        };
        let text = String::from_utf8_lossy(&bytes);
        match status {
            200..=299 => Ok(text.into_owned()),
            _ => Err(failure(status, &text)),
        }
    }

    async fn credentials(&self) -> Result<aws_credential_types::Credentials, Failure> {
        let mut cached = self.cached.lock().await;
        let fresh = |c: &aws_credential_types::Credentials| {
            c.expiry()
                .is_none_or(|at| at > SystemTime::now() + Duration::from_secs(60))
        };
        if let Some(credentials) = cached.as_ref().filter(|c| fresh(c)) {
            return Ok(credentials.clone());
        }
        let credentials = self.ask_chain().await?;
        *cached = Some(credentials.clone());
        Ok(credentials)
    }

    async fn ask_chain(&self) -> Result<aws_credential_types::Credentials, Failure> {
        let Some(chain) = &self.credentials else {
            return Err(Failure::new(
                Kind::Refused,
                None,
                "no AWS credentials: no source of the SDK's chain gave any",
            ));
        };
        chain.provide_credentials().await.map_err(|e| match e {
            CredentialsError::CredentialsNotLoaded(_) => Failure::new(
                Kind::Refused,
                None,
                "no AWS credentials: no source of the SDK's chain gave any",
            ),
            CredentialsError::InvalidConfiguration(_) => Failure::new(
                Kind::Refused,
                None,
                format!("the AWS configuration is invalid: {}", aws::root_cause(&e)),
            ),
            _ => Failure::new(
                Kind::Transient,
                None,
                format!(
                    "cannot get AWS credentials: {}",
                    aws::root_cause(&e).lines().next().unwrap_or_default()
                ),
            ),
        })
    }
}

/// EC2's endpoint in `region`.
pub fn default_endpoint(region: &str) -> String {
    match region.starts_with("cn-") {
        true => format!("https://ec2.{region}.amazonaws.com.cn"),
        false => format!("https://ec2.{region}.amazonaws.com"),
    }
}

/// A form value as SigV4 and the Query API want it: RFC 3986's unreserved characters
/// as they are, every other byte as `%XX`.
fn encode(value: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(value, SET).to_string()
}

/// A failed answer: EC2's error code and message when the body has them, else the
/// status alone (the body is never repeated).
pub fn failure(status: u16, body: &str) -> Failure {
    let said = error_code(body).ok().flatten();
    let code = said.as_ref().map(|(code, _)| code.as_str());
    let message = match &said {
        Some((code, Some(message))) => format!("{code}: {message}"),
        Some((code, None)) => code.clone(),
        None => format!("unexpected answer (HTTP {status})"),
    };
    Failure::new(aws::kind_of(code, Some(status)), code, message)
}

/// `<Response><Errors><Error><Code/><Message/>` (or an `<ErrorResponse><Error>`): the
/// first error's code and message.
fn error_code(body: &str) -> Result<Option<(String, Option<String>)>, XmlDecodeError> {
    let mut doc = Document::new(body);
    let mut root = doc.root_element()?;
    if root.start_el().matches("Error") {
        return read_error(&mut root);
    }
    while let Some(mut child) = root.next_tag() {
        if child.start_el().matches("Error") {
            return read_error(&mut child);
        }
        if child.start_el().matches("Errors") {
            while let Some(mut error) = child.next_tag() {
                if error.start_el().matches("Error") {
                    return read_error(&mut error);
                }
            }
        }
    }
    Ok(None)
}

fn read_error(
    error: &mut ScopedDecoder<'_, '_>,
) -> Result<Option<(String, Option<String>)>, XmlDecodeError> {
    let (mut code, mut message) = (None, None);
    while let Some(mut field) = error.next_tag() {
        if field.start_el().matches("Code") {
            code = Some(try_data(&mut field)?.trim().to_string());
        } else if field.start_el().matches("Message") {
            message = Some(try_data(&mut field)?.trim().to_string());
        }
    }
    Ok(code
        .filter(|c| !c.is_empty())
        .map(|c| (c, message.filter(|m| !m.is_empty()))))
}

/// A `DescribeInstances` answer: its instances and the next page's token.
pub fn instances(body: &str) -> Result<(Vec<Instance>, Option<String>), XmlDecodeError> {
    let mut doc = Document::new(body);
    let mut root = doc.root_element()?;
    let mut found = Vec::new();
    let mut next = None;
    while let Some(mut tag) = root.next_tag() {
        if tag.start_el().matches("reservationSet") {
            while let Some(mut reservation) = tag.next_tag() {
                while let Some(mut field) = reservation.next_tag() {
                    if field.start_el().matches("instancesSet") {
                        while let Some(mut item) = field.next_tag() {
                            found.push(instance(&mut item)?);
                        }
                    }
                }
            }
        } else if tag.start_el().matches("nextToken") {
            let token = try_data(&mut tag)?.trim().to_string();
            next = Some(token).filter(|t| !t.is_empty());
        }
    }
    Ok((found, next))
}

fn instance(item: &mut ScopedDecoder<'_, '_>) -> Result<Instance, XmlDecodeError> {
    let mut instance = Instance::default();
    while let Some(mut field) = item.next_tag() {
        let el = field.start_el();
        if el.matches("instanceId") {
            instance.id = try_data(&mut field)?.trim().to_string();
        } else if el.matches("launchTime") {
            instance.launch_time = try_data(&mut field)?.trim().to_string();
        } else if el.matches("instanceState") {
            while let Some(mut part) = field.next_tag() {
                if part.start_el().matches("name") {
                    instance.state = try_data(&mut part)?.trim().to_string();
                }
            }
        } else if el.matches("placement") {
            while let Some(mut part) = field.next_tag() {
                if part.start_el().matches("availabilityZone") {
                    instance.availability_zone = try_data(&mut part)?.trim().to_string();
                }
            }
        } else if el.matches("tagSet") {
            while let Some(mut tag) = field.next_tag() {
                let (mut key, mut value) = (None, String::new());
                while let Some(mut part) = tag.next_tag() {
                    if part.start_el().matches("key") {
                        key = Some(try_data(&mut part)?.to_string());
                    } else if part.start_el().matches("value") {
                        value = try_data(&mut part)?.to_string();
                    }
                }
                if let Some(key) = key {
                    instance.tags.insert(key, value);
                }
            }
        }
    }
    Ok(instance)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_of_instances_is_read_and_the_rest_ignored() {
        let body = r#"<?xml version="1.0" encoding="UTF-8"?>
<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <requestId>r-1</requestId>
  <reservationSet>
    <item>
      <reservationId>r-0a</reservationId>
      <groupSet><item><groupId>sg-1</groupId></item></groupSet>
      <instancesSet>
        <item>
          <instanceId>i-0aaa</instanceId>
          <instanceState><code>16</code><name>running</name></instanceState>
          <placement><availabilityZone>us-east-1a</availabilityZone><tenancy>default</tenancy></placement>
          <launchTime>2026-12-06T10:00:00.000Z</launchTime>
          <networkInterfaceSet><item><tagSet><item><key>no</key><value>no</value></item></tagSet></item></networkInterfaceSet>
          <tagSet>
            <item><key>bootstage:status</key><value>ready</value></item>
            <item><key>Name</key><value>a &amp; b</value></item>
            <item><key>empty</key><value/></item>
          </tagSet>
        </item>
        <item>
          <instanceId>i-0bbb</instanceId>
          <instanceState><code>0</code><name>pending</name></instanceState>
        </item>
      </instancesSet>
    </item>
  </reservationSet>
  <nextToken>tok-2</nextToken>
</DescribeInstancesResponse>"#;
        let (found, next) = instances(body).unwrap();
        assert_eq!(next.as_deref(), Some("tok-2"));
        assert_eq!(
            found,
            [
                Instance {
                    id: "i-0aaa".into(),
                    state: "running".into(),
                    availability_zone: "us-east-1a".into(),
                    launch_time: "2026-12-06T10:00:00.000Z".into(),
                    tags: [
                        ("Name", "a & b"),
                        ("bootstage:status", "ready"),
                        ("empty", "")
                    ]
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                },
                Instance {
                    id: "i-0bbb".into(),
                    state: "pending".into(),
                    ..Default::default()
                },
            ]
        );
        let last =
            "<DescribeInstancesResponse><reservationSet/><nextToken/></DescribeInstancesResponse>";
        assert_eq!(instances(last).unwrap(), (vec![], None));
    }

    #[test]
    fn errors_are_sorted_by_their_code_and_never_repeat_the_body() {
        let said = |code: &str| {
            format!(
                "<Response><Errors><Error><Code>{code}</Code><Message>said EC2</Message></Error></Errors><RequestID>x</RequestID></Response>"
            )
        };
        let cases = [
            (
                403,
                said("UnauthorizedOperation"),
                Failure::new(
                    Kind::Refused,
                    Some("UnauthorizedOperation"),
                    "UnauthorizedOperation: said EC2",
                ),
            ),
            (
                401,
                said("AuthFailure"),
                Failure::new(Kind::Refused, Some("AuthFailure"), "AuthFailure: said EC2"),
            ),
            (
                503,
                said("RequestLimitExceeded"),
                Failure::new(
                    Kind::Throttled,
                    Some("RequestLimitExceeded"),
                    "RequestLimitExceeded: said EC2",
                ),
            ),
            (
                500,
                said("InternalError"),
                Failure::new(
                    Kind::Transient,
                    Some("InternalError"),
                    "InternalError: said EC2",
                ),
            ),
            (
                400,
                said("InvalidInstanceID.NotFound"),
                Failure::new(
                    Kind::Permanent,
                    Some("InvalidInstanceID.NotFound"),
                    "InvalidInstanceID.NotFound: said EC2",
                ),
            ),
            (
                400,
                "<ErrorResponse><Error><Code>Throttling</Code></Error></ErrorResponse>".into(),
                Failure::new(Kind::Throttled, Some("Throttling"), "Throttling"),
            ),
            (
                502,
                "<html>a proxy's secret page</html>".into(),
                Failure::new(Kind::Transient, None, "unexpected answer (HTTP 502)"),
            ),
            (
                400,
                "not xml at all".into(),
                Failure::new(Kind::Permanent, None, "unexpected answer (HTTP 400)"),
            ),
        ];
        for (status, body, expected) in cases {
            assert_eq!(failure(status, &body), expected, "{body}");
        }
    }

    #[test]
    fn form_values_are_encoded_as_sigv4_wants() {
        assert_eq!(encode("bootstage:status"), "bootstage%3Astatus");
        assert_eq!(encode("a b+c/d~e_f.g-h"), "a%20b%2Bc%2Fd~e_f.g-h");
        assert_eq!(encode("é"), "%C3%A9");
        assert_eq!(
            default_endpoint("eu-west-1"),
            "https://ec2.eu-west-1.amazonaws.com"
        );
        assert_eq!(
            default_endpoint("cn-north-1"),
            "https://ec2.cn-north-1.amazonaws.com.cn"
        );
    }
}
