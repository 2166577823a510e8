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
//!   The region must be a host label (letters, digits, `-`) before it names a host; the
//!   `Host` header is the endpoint's host and port only (never a `user:password@`).
//! - Bounds: each attempt within `attempt_timeout` and what is left of the caller's
//!   deadline; throttled and transient failures retried under `base::retry` until the
//!   deadline; an answer's body at most [`MAX_ANSWER`] for a `DescribeInstances` page,
//!   [`MAX_SMALL_ANSWER`] for anything else (`CreateTags`, an error): a larger one is a
//!   permanent failure, not downloaded again. Paging ([`Paging`]) stops with an error at a
//!   token seen before (a cycle) and past [`MAX_PAGES`] pages or [`MAX_INSTANCES`].
//! - Errors: EC2's `<Response><Errors><Error><Code/><Message/>` read into an
//!   `aws::Failure`, sorted by `aws::kind_of` as every AWS error is; a message carries the
//!   action (`ec2:CreateTags: …`, added here and nowhere else), the code and EC2's message
//!   (at most [`MAX_MESSAGE`] characters, shown escaped: `report::tags::shown_line`), never
//!   the body of an answer.
//! - Answers: XML read with `aws-smithy-xml`, only the fields bootstage uses.

use std::collections::{BTreeMap, HashSet};
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
use crate::report::tags::shown_line;

/// The Query API's version.
pub const VERSION: &str = "2016-11-15";
/// `DescribeInstances` answers at most this many instances a page (and at least 5).
pub const MAX_PAGE: u32 = 1000;
pub const MIN_PAGE: u32 = 5;
/// The largest `DescribeInstances` page read (a page of 1,000 instances is a few MB).
pub const MAX_ANSWER: usize = 64 * 1024 * 1024;
/// The largest answer read of anything else: `CreateTags`' (a few hundred bytes), an
/// error's.
pub const MAX_SMALL_ANSWER: usize = 64 * 1024;
/// The most pages one listing reads ([`Paging`]).
pub const MAX_PAGES: usize = 1000;
/// The most instances one listing gathers.
pub const MAX_INSTANCES: usize = 100_000;
/// The most characters of a service's error message kept.
pub const MAX_MESSAGE: usize = 300;
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
        if !is_region(&region) {
            return Err(AwsError::BadEndpoint {
                variable: "the region".into(),
                value: shown_line(&region),
                why: "is not a region's name (letters, digits and '-')".into(),
            });
        }
        let (variable, raw) = match aws::endpoint_and_variable("EC2") {
            Some((variable, url)) => (variable, url),
            None => (String::new(), default_endpoint(&region)),
        };
        let url: http::Uri = raw.parse().map_err(|e| AwsError::BadEndpoint {
            variable,
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
        self.call("CreateTags", &params, MAX_SMALL_ANSWER, deadline)
            .await
            .map(drop)
            .map_err(named("CreateTags"))
    }

    /// Every instance `filters` select, page by page (`page` instances each, from
    /// [`MIN_PAGE`] to [`MAX_PAGE`]; `NextToken` to the end, within [`Paging`]'s bounds).
    pub async fn describe_instances(
        &self,
        filters: &[Filter],
        page: u32,
        deadline: Deadline,
    ) -> Result<Vec<Instance>, Failure> {
        self.all_pages(filters, page, deadline)
            .await
            .map_err(named("DescribeInstances"))
    }

    async fn all_pages(
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
        let mut paging = Paging::new(MAX_PAGES, MAX_INSTANCES);
        let mut token: Option<String> = None;
        loop {
            let mut params = base.clone();
            if let Some(token) = &token {
                params.push(("NextToken".into(), token.clone()));
            }
            let body = self
                .call("DescribeInstances", &params, MAX_ANSWER, deadline)
                .await?;
            let (instances, next) = instances(&body).map_err(|e| {
                Failure::new(
                    Kind::Permanent,
                    None,
                    format!("unreadable answer ({})", shown_line(&e.to_string())),
                )
            })?;
            let count = instances.len();
            found.extend(instances);
            match paging.next(next, count)? {
                Some(next) => token = Some(next),
                None => return Ok(found),
            }
        }
    }

    /// One action, retried under `base::retry::THROTTLED` until `deadline`; its answer's
    /// body on success.
    async fn call(
        &self,
        action: &str,
        params: &[(String, String)],
        limit: usize,
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
        let size = limit;
        retry::until_deadline(
            retry::THROTTLED,
            deadline,
            |e: &Failure, attempt, sleep| {
                tracing::warn!("{name}: {e}; retrying in {sleep:.1?} (retry {attempt})")
            },
            || async {
                let limit = self.attempt_timeout.min(deadline.remaining());
                match tokio::time::timeout(limit, self.attempt(body.clone(), size)).await {
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

    /// One signed request; its answer's body (at most `limit` bytes when it succeeds,
    /// [`MAX_SMALL_ANSWER`] when it does not).
    async fn attempt(&self, body: Bytes, limit: usize) -> Result<String, Failure> {
        let credentials = self.credentials().await?;
        let identity: Identity = credentials.into();
        let host = host_header(&self.url);
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
            .map_err(unsignable)?
            .into();
        let signable = SignableRequest::new(
            "POST",
            &url,
            headers.iter().copied(),
            SignableBody::Bytes(&body),
        )
        .map_err(unsignable)?;
        let (instructions, _) = sign(signable, &params).map_err(unsignable)?.into_parts();
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
        let limit = match status {
            200..=299 => limit,
            _ => MAX_SMALL_ANSWER,
        };
        let read = Limited::new(response.into_body(), limit)
            .collect()
            .await
            .map(|b| b.to_bytes());
        let bytes = match read {
            Ok(bytes) => bytes,
            // The same request would bring the same answer: not downloaded again.
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(Failure::new(
                    Kind::Permanent,
                    None,
                    format!("an answer larger than {limit} bytes (HTTP {status})"),
                ));
            }
            Err(_) => {
                return Err(Failure::new(
                    Kind::Transient,
                    None,
                    format!("unreadable answer (HTTP {status})"),
                ));
            }
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
        let none = || {
            Failure::new(
                Kind::Refused,
                None,
                "no AWS credentials: no source of the SDK's chain gave any",
            )
        };
        let Some(chain) = &self.credentials else {
            return Err(none());
        };
        chain.provide_credentials().await.map_err(|e| match e {
            CredentialsError::CredentialsNotLoaded(_) => none(),
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

/// A request that cannot be signed or built (the same one never could).
fn unsignable(e: impl std::fmt::Display) -> Failure {
    Failure::new(Kind::Permanent, None, format!("cannot sign: {e}"))
}

/// A failure of `action`, named as every EC2 failure is said: `ec2:CreateTags: …`.
fn named(action: &'static str) -> impl Fn(Failure) -> Failure {
    move |mut e| {
        e.message = format!("ec2:{action}: {}", e.message);
        e
    }
}

/// The `Host` header of `url`: its host and port, never a `user:password@` before them.
pub fn host_header(url: &http::Uri) -> String {
    let host = url.host().unwrap_or_default();
    match url.port_u16() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    }
}

/// Whether `region` can name a host: one DNS label of ASCII letters, digits and `-`.
pub fn is_region(region: &str) -> bool {
    (1..=63).contains(&region.len())
        && region
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !region.starts_with('-')
        && !region.ends_with('-')
}

/// A listing's pages, bounded: the next token to ask for, or the end; an error when a
/// token comes back that was asked for before (a cycle, which would page until the
/// deadline or return a listing cut short) or when the pages or the items pass their
/// bounds. Shared by every paged listing (`DescribeInstances` here, `fleet`'s
/// `ListObjectsV2`).
#[derive(Debug)]
pub struct Paging {
    seen: HashSet<String>,
    pages: usize,
    items: usize,
    max_pages: usize,
    max_items: usize,
}

impl Paging {
    pub fn new(max_pages: usize, max_items: usize) -> Paging {
        Paging {
            seen: HashSet::new(),
            pages: 0,
            items: 0,
            max_pages,
            max_items,
        }
    }

    /// After a page of `items` whose next token is `next`: the token to ask for next, or
    /// `None` at the end.
    pub fn next(&mut self, next: Option<String>, items: usize) -> Result<Option<String>, Failure> {
        self.pages += 1;
        self.items += items;
        let bad = |why: String| Err(Failure::new(Kind::Permanent, None, why));
        if self.items > self.max_items {
            return bad(format!(
                "more than {} items in {} pages: not read further",
                self.max_items, self.pages
            ));
        }
        let Some(next) = next else {
            return Ok(None);
        };
        if self.pages >= self.max_pages {
            return bad(format!(
                "more than {} pages: not read further",
                self.max_pages
            ));
        }
        // The token itself is the service's: not repeated.
        if !self.seen.insert(next.clone()) {
            return bad(format!(
                "page {} named a next page asked for before: the pages go round in a circle",
                self.pages
            ));
        }
        Ok(Some(next))
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
/// The code is kept only when it looks like one (letters, digits, `.`, `_`, `-`, at most
/// 128); the message is cut to [`MAX_MESSAGE`] characters and shown escaped.
pub fn failure(status: u16, body: &str) -> Failure {
    let said = error_code(body).ok().flatten().filter(|(code, _)| {
        code.len() <= 128
            && code
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-_".contains(&b))
    });
    let code = said.as_ref().map(|(code, _)| code.as_str());
    let message = match &said {
        Some((code, Some(message))) => format!("{code}: {}", cut(&shown_line(message))),
        Some((code, None)) => code.clone(),
        None => format!("unexpected answer (HTTP {status})"),
    };
    Failure::new(aws::kind_of(code, Some(status)), code, message)
}

/// `text` at most [`MAX_MESSAGE`] characters, `…` where it was cut.
fn cut(text: &str) -> String {
    match text.char_indices().nth(MAX_MESSAGE) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
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
    fn pages_end_at_the_last_one_and_never_go_round() {
        let tok = |t: &str| Some(t.to_string());
        // (each page's next token and items, what `next` says of each, its bounds)
        type Case = (
            Vec<(Option<String>, usize)>,
            Vec<Result<Option<String>, &'static str>>,
            (usize, usize),
        );
        let cases: Vec<Case> = vec![
            (vec![(None, 3)], vec![Ok(None)], (10, 100)),
            (
                vec![(tok("a"), 5), (tok("b"), 5), (None, 1)],
                vec![Ok(tok("a")), Ok(tok("b")), Ok(None)],
                (10, 100),
            ),
            // A token that comes back at once: it was a listing cut short.
            (
                vec![(tok("a"), 5), (tok("a"), 5)],
                vec![
                    Ok(tok("a")),
                    Err(
                        "page 2 named a next page asked for before: the pages go round in a circle",
                    ),
                ],
                (10, 100),
            ),
            // A circle a → b → a: it paged until the deadline.
            (
                vec![(tok("a"), 5), (tok("b"), 5), (tok("a"), 5)],
                vec![
                    Ok(tok("a")),
                    Ok(tok("b")),
                    Err(
                        "page 3 named a next page asked for before: the pages go round in a circle",
                    ),
                ],
                (10, 100),
            ),
            (
                vec![(tok("a"), 0), (tok("b"), 0), (tok("c"), 0)],
                vec![
                    Ok(tok("a")),
                    Ok(tok("b")),
                    Err("more than 3 pages: not read further"),
                ],
                (3, 100),
            ),
            (
                vec![(tok("a"), 6), (None, 5)],
                vec![
                    Ok(tok("a")),
                    Err("more than 10 items in 2 pages: not read further"),
                ],
                (10, 10),
            ),
        ];
        for (pages, expected, (max_pages, max_items)) in cases {
            let mut paging = Paging::new(max_pages, max_items);
            let got: Vec<Result<Option<String>, String>> = pages
                .into_iter()
                .map(|(next, items)| paging.next(next, items).map_err(|e| e.message))
                .collect();
            let expected: Vec<Result<Option<String>, String>> = expected
                .into_iter()
                .map(|r| r.map_err(String::from))
                .collect();
            assert_eq!(got, expected);
        }
    }

    #[test]
    fn an_error_message_is_cut_and_escaped() {
        let body = |code: &str, message: &str| {
            format!(
                "<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors></Response>"
            )
        };
        let long = "x".repeat(1000);
        let cases = [
            (
                body("InvalidParameterValue", "bad \u{200b}[2J\nvalue\u{202e}"),
                Some("InvalidParameterValue"),
                "InvalidParameterValue: bad \\u{200b}[2J\\u{a}value\\u{202e}".to_string(),
            ),
            (
                body("InvalidParameterValue", &long),
                Some("InvalidParameterValue"),
                format!("InvalidParameterValue: {}…", "x".repeat(MAX_MESSAGE)),
            ),
            // A control character is no XML: the answer is unreadable.
            (
                body("InvalidParameterValue", "\u{1b}[2J"),
                None,
                "unexpected answer (HTTP 400)".to_string(),
            ),
            // A code that is no code is not one.
            (
                body("Bad Code\u{202e}", "m"),
                None,
                "unexpected answer (HTTP 400)".to_string(),
            ),
        ];
        for (body, code, message) in cases {
            let got = failure(400, &body);
            assert_eq!(got.code.as_deref(), code, "{body}");
            assert_eq!(got.message, message, "{body}");
        }
    }

    #[test]
    fn the_host_header_and_the_region_name_a_host_only() {
        let cases = [
            ("http://user:secret@127.0.0.1:5000/", "127.0.0.1:5000"),
            (
                "https://ec2.eu-west-1.amazonaws.com",
                "ec2.eu-west-1.amazonaws.com",
            ),
            ("http://[::1]:8080/x", "[::1]:8080"),
        ];
        for (url, host) in cases {
            assert_eq!(host_header(&url.parse().unwrap()), host, "{url}");
        }
        for (region, ok) in [
            ("eu-west-1", true),
            ("cn-north-1", true),
            ("", false),
            ("us-east-1.evil.example", false),
            ("a/b", false),
            ("x@y", false),
            ("-a", false),
        ] {
            assert_eq!(is_region(region), ok, "{region}");
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
