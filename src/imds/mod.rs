//! The EC2 instance metadata service (IMDS) protocol, as AWS documents it.
//!
//! - Endpoint: `--imds-endpoint`, else `AWS_EC2_METADATA_SERVICE_ENDPOINT`, else
//!   `AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE=IPv6` → `http://[fd00:ec2::254]`, else
//!   `http://169.254.169.254`. `AWS_EC2_METADATA_DISABLED=true` turns IMDS off.
//! - Sessions: an IMDSv2 token (TTL 6 h) is fetched once with `PUT /latest/api/token`,
//!   sent on every GET and replaced when a GET answers 401. A 403 on the PUT means IMDS is
//!   disabled for this instance (stop at once); 404/405 means the endpoint only speaks
//!   IMDSv1, which we fall back to unless `--imds-v2-only`. A token PUT that times out is
//!   retried like any request (one slow answer must not fail a boot); only after
//!   [`HOP_LIMIT_TIMEOUTS`] in a row, while plain GETs are answered, is it the classic
//!   hop-limit trap in containers: then IMDSv1 with a warning naming the hop limit (as
//!   botocore does), or with `--imds-v2-only` a failure that says so.
//! - Every request is bounded by `--request-timeout` and by the stage deadline; no proxy
//!   is ever used (IMDS is link-local) and redirects are not followed.
//!
//! How each HTTP status is handled lives in one place: [`verdict`].
//!
//! Other clouds' metadata services live beside it (`gcp.rs`: Compute Engine's,
//! `azure.rs`: Azure's, with `wireserver.rs` for its ready report, `openstack.rs`:
//! Nova's), and `provider.rs` decides which one the metadata stage asks.

pub mod azure;
pub mod facts;
pub mod gcp;
mod http;
pub mod openstack;
pub mod provider;
pub mod userdata;
pub mod wireserver;

use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{Method, RequestBuilder, StatusCode};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::base::exit::{ExitCode, ExitStatus};
use crate::base::retry::{self, Deadline, RetryHint};

pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
/// Token PUTs that time out in a row, with plain GETs answered, before it is the hop limit.
/// Where an instance of an auto scaling group is headed (`InService`, `Warmed:Stopped` …).
pub const TARGET_LIFECYCLE_STATE: &str = "/latest/meta-data/autoscaling/target-lifecycle-state";

/// What a target lifecycle state means for the app.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// In service, or in no group at all: the app may start.
    Service,
    /// In the warm pool (`Warmed:Stopped`, `Warmed:Running`, `Warmed:Hibernated`).
    Warm(String),
    /// On the way out of the group: the app does not start.
    Leaving(String),
}

/// The decision, from IMDS's `autoscaling/target-lifecycle-state` alone (`None`: a 404,
/// outside a group or before any transition). A state this code does not know starts
/// the app: an unknown word must not keep a service down.
pub fn target(state: Option<&str>) -> Target {
    match state {
        None => Target::Service,
        Some("Terminated" | "Warmed:Terminated") => {
            Target::Leaving(state.unwrap_or_default().into())
        }
        Some(s) if s.starts_with("Warmed:") => Target::Warm(s.into()),
        Some(_) => Target::Service,
    }
}

pub const HOP_LIMIT_TIMEOUTS: u32 = 3;
pub const IPV6_ENDPOINT: &str = "http://[fd00:ec2::254]";

const TOKEN_PATH: &str = "/latest/api/token";
const TOKEN_TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
const TOKEN_TTL_SECS: u32 = 21_600;
/// No IMDS answer we read is larger (user-data is at most 16 KiB); stop reading past this.
const MAX_BODY: usize = 64 * 1024;
/// How long to wait on a throttling answer (429/503) that names no Retry-After.
const THROTTLE_WAIT: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    #[error("IMDS is disabled for this instance ({0})")]
    Disabled(String),
    #[error(
        "IMDS at {endpoint} does not offer IMDSv2 tokens (HTTP {status}) and --imds-v2-only forbids IMDSv1"
    )]
    V2Unsupported { endpoint: String, status: u16 },
    #[error(
        "the IMDSv2 token request to {0} timed out while plain requests are answered: the instance's \
         metadata hop limit is probably too low for this container or network namespace \
         (IMDSv2 hop limit? raise HttpPutResponseHopLimit to 2)"
    )]
    HopLimit(String),
    #[error("{what}: unexpected HTTP {status}")]
    Unexpected { what: String, status: u16 },
    #[error("{what}: invalid answer: {why}")]
    Invalid { what: String, why: String },
    #[error("{0}: not found")]
    NotFound(String),
    #[error(
        "{what}: the answer from {endpoint} lacks Metadata-Flavor: Google, so it is not Compute Engine's metadata server; refusing it"
    )]
    NotGoogle { what: String, endpoint: String },
    #[error("{0}: timed out")]
    TimedOut(String),
    #[error("{what}: {why}")]
    Transient {
        what: String,
        why: String,
        retry_after: Option<Duration>,
    },
    /// user-data answered 404 inside its grace period; retried, never reported.
    #[error("user-data is not there yet")]
    NotYet,
    #[error("IMDS at {endpoint} gave no usable answer within the deadline of {}; last: {last}", humantime::format_duration(*budget))]
    GaveUp {
        endpoint: String,
        budget: Duration,
        last: Box<ImdsError>,
    },
}

impl ImdsError {
    /// Permanent errors will not change on a retry or a restart of the unit.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            ImdsError::Disabled(_)
                | ImdsError::V2Unsupported { .. }
                | ImdsError::Unexpected { .. }
                | ImdsError::Invalid { .. }
                | ImdsError::NotGoogle { .. }
        )
    }
}

impl RetryHint for ImdsError {
    fn retry_after(&self) -> Option<Duration> {
        match self {
            ImdsError::Transient { retry_after, .. } => Some(retry_after.unwrap_or_default()),
            ImdsError::NotYet | ImdsError::TimedOut(_) => Some(Duration::ZERO),
            _ => None,
        }
    }
}

/// Picks the endpoint: the flag, then the AWS SDKs' environment variables.
pub fn resolve_endpoint(
    flag: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let (chosen, origin) = if let Some(flag) = flag {
        (flag.to_string(), "--imds-endpoint ")
    } else if env("AWS_EC2_METADATA_DISABLED")
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
    {
        return Err(
            "IMDS is disabled by AWS_EC2_METADATA_DISABLED=true; use --user-data-file off-cloud"
                .into(),
        );
    } else if let Some(url) = env("AWS_EC2_METADATA_SERVICE_ENDPOINT").filter(|v| !v.is_empty()) {
        (url, "AWS_EC2_METADATA_SERVICE_ENDPOINT=")
    } else {
        let url = match env("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE")
            .as_deref()
            .map(str::trim)
        {
            None | Some("") => DEFAULT_ENDPOINT.to_string(),
            Some(m) if m.eq_ignore_ascii_case("ipv4") => DEFAULT_ENDPOINT.to_string(),
            Some(m) if m.eq_ignore_ascii_case("ipv6") => IPV6_ENDPOINT.to_string(),
            Some(m) => {
                return Err(format!(
                    "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE={m:?}: expected IPv4 or IPv6"
                ));
            }
        };
        (url, "IMDS endpoint ")
    };
    check_endpoint(&chosen).map_err(|why| format!("{origin}{chosen:?}{why}"))?;
    Ok(chosen.trim_end_matches('/').to_string())
}

/// An endpoint is an address alone, `http://HOST[:PORT]`: bootstage adds `/latest/…`
/// itself. What is wrong, said after the endpoint, with what to write instead.
fn check_endpoint(chosen: &str) -> Result<(), String> {
    if !chosen.contains("://") {
        let bare = chosen.trim_end_matches('/');
        return Err(format!(
            " needs http:// (IMDS is plain HTTP): write http://{bare}"
        ));
    }
    let url = reqwest::Url::parse(chosen).map_err(|e| format!(": {e}"))?;
    if url.scheme() != "http" || url.host().is_none() {
        return Err(": expected http://HOST[:PORT] (IMDS is plain HTTP)".into());
    }
    let extra = match (url.path(), url.query(), url.fragment()) {
        ("" | "/", None, None) => return Ok(()),
        (path, query, fragment) => {
            let query = query.map(|q| format!("?{q}")).unwrap_or_default();
            let fragment = fragment.map(|f| format!("#{f}")).unwrap_or_default();
            format!("{path}{query}{fragment}")
        }
    };
    Err(format!(
        ": give the address alone, without {extra} (bootstage adds the paths): write {}",
        url.origin().ascii_serialization()
    ))
}

pub struct Options {
    pub endpoint: String,
    pub v2_only: bool,
    pub request_timeout: Duration,
    pub deadline: Deadline,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Session {
    Unknown,
    V2(String),
    V1,
}

#[derive(Clone, Copy)]
enum Request {
    Token,
    Get,
}

/// What to do with an HTTP status, for a request kind and the v2-only policy.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Body,
    TokenRejected,
    UseV1,
    Absent,
    Retry,
    Disabled,
    V2Unsupported,
    Unexpected,
}

fn verdict(request: Request, status: StatusCode, v2_only: bool) -> Verdict {
    match (request, status.as_u16()) {
        (_, 200) => Verdict::Body,
        (_, 403) => Verdict::Disabled,
        (Request::Token, 404 | 405) if v2_only => Verdict::V2Unsupported,
        (Request::Token, 404 | 405) => Verdict::UseV1,
        (Request::Get, 401) => Verdict::TokenRejected,
        (Request::Get, 404) => Verdict::Absent,
        (_, 429 | 500..=599) => Verdict::Retry,
        _ => Verdict::Unexpected,
    }
}

pub struct Client {
    http: reqwest::Client,
    endpoint: String,
    v2_only: bool,
    request_timeout: Duration,
    deadline: Deadline,
    session: Mutex<Session>,
    /// Set by a throttling answer: no request of this client goes out before it.
    not_before: std::sync::Mutex<Option<Instant>>,
    /// Token PUTs that timed out since the last answer to one.
    token_timeouts: std::sync::atomic::AtomicU32,
}

struct Answer {
    status: StatusCode,
    retry_after: Option<Duration>,
    body: Vec<u8>,
}

impl Client {
    pub fn new(opts: Options) -> Result<Client, ImdsError> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(opts.request_timeout)
            .build()
            .map_err(|e| ImdsError::Invalid {
                what: "HTTP client".into(),
                why: e.to_string(),
            })?;
        Ok(Client {
            http,
            endpoint: opts.endpoint,
            v2_only: opts.v2_only,
            request_timeout: opts.request_timeout,
            deadline: opts.deadline,
            session: Mutex::new(Session::Unknown),
            not_before: std::sync::Mutex::new(None),
            token_timeouts: std::sync::atomic::AtomicU32::new(0),
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn deadline(&self) -> Deadline {
        self.deadline
    }

    /// Polls `/latest/user-data`. A 404 means "not yet" until `grace` has passed since the
    /// stage started, then "this instance has no user-data" (`Ok(None)`).
    pub async fn user_data(
        &self,
        grace: Duration,
        on_wait: impl FnMut(u32, Duration),
    ) -> Result<Option<Vec<u8>>, ImdsError> {
        poll_user_data(retry::POLL, self.deadline, grace, on_wait, || async {
            match self.get("/latest/user-data").await {
                Ok(body) => Ok(Some(body)),
                Err(ImdsError::NotFound(_)) => Ok(None),
                Err(e) => Err(e),
            }
        })
        .await
        .map_err(|e| self.gave_up(e))
    }

    /// One GET of a text item (trimmed); `None` for a 404, which IMDS answers for an item
    /// that has no value yet (`autoscaling/target-lifecycle-state` outside a group, a Spot
    /// `instance-action` not scheduled). For a poller: one try, no retry.
    pub async fn text(&self, path: &str) -> Result<Option<String>, ImdsError> {
        match self.get(path).await {
            Ok(body) => Ok(Some(String::from_utf8_lossy(&body).trim().to_string())),
            Err(ImdsError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// GETs a path, retrying transient failures until the deadline.
    pub async fn get_retrying(&self, path: &str) -> Result<Vec<u8>, ImdsError> {
        retry::until_deadline(
            retry::BACKOFF,
            self.deadline,
            |_, _, _| {},
            || self.get(path),
        )
        .await
        .map_err(|e| self.gave_up(e))
    }

    fn gave_up(&self, e: ImdsError) -> ImdsError {
        match e {
            ImdsError::Transient { .. } | ImdsError::TimedOut(_) => ImdsError::GaveUp {
                endpoint: self.endpoint.clone(),
                budget: self.deadline.budget(),
                last: Box::new(e),
            },
            e => e,
        }
    }

    /// One GET, with the session's token; a rejected token is replaced once.
    pub async fn get(&self, path: &str) -> Result<Vec<u8>, ImdsError> {
        let what = format!("GET {path}");
        for _ in 0..2 {
            let session = self.session().await?;
            let mut request = self.request(Method::GET, path)?;
            if let Session::V2(token) = &session {
                request = request.header(TOKEN_HEADER, token);
            }
            let answer = self.send(request, &what).await?;
            match verdict(Request::Get, answer.status, self.v2_only) {
                Verdict::Body => return Ok(answer.body),
                Verdict::Absent => return Err(ImdsError::NotFound(what)),
                // IMDSv1 after token timeouts, and IMDS wants a token: the hop limit.
                Verdict::TokenRejected if session == Session::V1 => {
                    return Err(ImdsError::HopLimit(self.endpoint.clone()));
                }
                Verdict::TokenRejected => self.forget(&session).await,
                Verdict::Retry => return Err(retry_later(what, &answer)),
                Verdict::Disabled => {
                    return Err(ImdsError::Disabled(format!("{what} answered 403")));
                }
                _ => {
                    return Err(ImdsError::Unexpected {
                        what,
                        status: answer.status.as_u16(),
                    });
                }
            }
        }
        Err(ImdsError::Transient {
            what,
            why: "a fresh IMDSv2 token was rejected too (401)".into(),
            retry_after: None,
        })
    }

    async fn session(&self) -> Result<Session, ImdsError> {
        let mut session = self.session.lock().await;
        if *session == Session::Unknown {
            *session = self.fetch_token().await?;
        }
        Ok(session.clone())
    }

    async fn forget(&self, used: &Session) {
        let mut session = self.session.lock().await;
        if *session == *used {
            tracing::debug!("IMDS rejected the session token (401); fetching a new one");
            *session = Session::Unknown;
        }
    }

    async fn fetch_token(&self) -> Result<Session, ImdsError> {
        let what = format!("PUT {TOKEN_PATH}");
        let request = self
            .request(Method::PUT, TOKEN_PATH)?
            .header(TOKEN_TTL_HEADER, TOKEN_TTL_SECS);
        use std::sync::atomic::Ordering;
        // Decided already, by this run's earlier requests: do not ask again.
        if self.v2_only && self.token_timeouts.load(Ordering::Relaxed) >= HOP_LIMIT_TIMEOUTS {
            return Err(ImdsError::HopLimit(self.endpoint.clone()));
        }
        let answer = match self.send(request, &what).await {
            Ok(answer) => {
                self.token_timeouts.store(0, Ordering::Relaxed);
                answer
            }
            Err(e @ ImdsError::TimedOut(_)) => {
                let timeouts = self.token_timeouts.fetch_add(1, Ordering::Relaxed) + 1;
                if timeouts < HOP_LIMIT_TIMEOUTS || !self.answers_plain_get().await {
                    // Retried by the caller like any transient failure.
                    return Err(e);
                }
                if self.v2_only {
                    return Err(ImdsError::HopLimit(self.endpoint.clone()));
                }
                tracing::warn!(
                    timeouts,
                    "the IMDSv2 token request timed out while plain requests are answered: the \
                     instance's metadata hop limit is probably too low for this container or \
                     network namespace (raise HttpPutResponseHopLimit to 2); falling back to IMDSv1"
                );
                return Ok(Session::V1);
            }
            Err(e) => return Err(e),
        };
        let status = answer.status.as_u16();
        match verdict(Request::Token, answer.status, self.v2_only) {
            Verdict::Body => {
                let token = String::from_utf8(answer.body)
                    .ok()
                    .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()))
                    .ok_or_else(|| ImdsError::Invalid {
                        what,
                        why: "the token is not printable text".into(),
                    })?;
                Ok(Session::V2(token))
            }
            Verdict::UseV1 => {
                tracing::warn!(
                    status,
                    "IMDS offers no IMDSv2 token; falling back to IMDSv1"
                );
                Ok(Session::V1)
            }
            Verdict::Disabled => Err(ImdsError::Disabled(
                "the IMDSv2 token request was refused with 403".into(),
            )),
            Verdict::V2Unsupported => Err(ImdsError::V2Unsupported {
                endpoint: self.endpoint.clone(),
                status,
            }),
            Verdict::Retry => Err(retry_later(what, &answer)),
            _ => Err(ImdsError::Unexpected { what, status }),
        }
    }

    /// Whether IMDS answers a plain GET at all (any HTTP status).
    async fn answers_plain_get(&self) -> bool {
        match self.request(Method::GET, "/latest/meta-data/") {
            Ok(request) => request.send().await.is_ok(),
            Err(_) => false,
        }
    }

    fn request(&self, method: Method, path: &str) -> Result<RequestBuilder, ImdsError> {
        let timeout = self.request_timeout.min(self.deadline.remaining());
        if timeout.is_zero() {
            return Err(ImdsError::Transient {
                what: format!("{method} {path}"),
                why: "the deadline has passed".into(),
                retry_after: None,
            });
        }
        Ok(self
            .http
            .request(method, format!("{}{path}", self.endpoint))
            .timeout(timeout))
    }

    async fn send(&self, request: RequestBuilder, what: &str) -> Result<Answer, ImdsError> {
        self.wait_out_throttling().await;
        let transient = |e: reqwest::Error| match e.is_timeout() {
            true => ImdsError::TimedOut(what.to_string()),
            false => ImdsError::Transient {
                what: what.to_string(),
                why: describe(&e),
                retry_after: None,
            },
        };
        let mut response = request.send().await.map_err(transient)?;
        let status = response.status();
        let retry_after = parse_retry_after(response.headers());
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transient)? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_BODY {
                return Err(ImdsError::Invalid {
                    what: what.to_string(),
                    why: format!("the answer is over {MAX_BODY} bytes"),
                });
            }
        }
        if let Some(wait) = retry_after {
            self.throttle(wait);
        }
        Ok(Answer {
            status,
            retry_after,
            body,
        })
    }

    /// IMDS is rate-limited per instance: a Retry-After holds back every request of this
    /// run, not only the one that got it.
    fn throttle(&self, wait: Duration) {
        // A server may ask for any wait (u64::MAX seconds included): none outlasts ours.
        let until = Instant::now() + wait.min(self.deadline.remaining());
        let mut not_before = self.not_before.lock().unwrap_or_else(|e| e.into_inner());
        *not_before = Some(not_before.map_or(until, |t| t.max(until)));
    }

    async fn wait_out_throttling(&self) {
        let until = *self.not_before.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(until) = until {
            tokio::time::sleep_until(until.min(Instant::now() + self.deadline.remaining())).await;
        }
    }
}

fn retry_later(what: String, answer: &Answer) -> ImdsError {
    let status = answer.status.as_u16();
    let floor = match status {
        429 | 503 => Some(THROTTLE_WAIT),
        _ => None,
    };
    ImdsError::Transient {
        what,
        why: format!("HTTP {status}"),
        retry_after: answer.retry_after.or(floor),
    }
}

fn parse_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs))
}

/// A transport error in a few words: its innermost cause.
fn describe(e: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    if e.is_connect() {
        format!("cannot connect: {cause}")
    } else {
        cause.to_string()
    }
}

impl ExitStatus for ImdsError {
    fn exit_code(&self) -> ExitCode {
        match self.is_permanent() {
            true => ExitCode::ImdsDisabled,
            false => ExitCode::TempFail,
        }
    }
}

/// How every provider waits for user-data: `fetch` asks once (`Ok(None)`: not there, a
/// 404 or an empty value), and "not there" is "not yet" until `grace` has passed since the
/// stage started (`deadline`'s start), then "this instance has none" (`Ok(None)`);
/// transient failures are retried under `policy` until the deadline. `on_wait(attempt,
/// waited)` before each wait.
pub(crate) async fn poll_user_data<F, Fut>(
    policy: retry::Policy,
    deadline: Deadline,
    grace: Duration,
    mut on_wait: impl FnMut(u32, Duration),
    mut fetch: F,
) -> Result<Option<Vec<u8>>, ImdsError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<Vec<u8>>, ImdsError>>,
{
    let result = retry::until_deadline(
        policy,
        deadline,
        |_, attempt, _| on_wait(attempt, deadline.elapsed()),
        || {
            let asked = fetch();
            async move {
                match (asked.await?, deadline.elapsed() < grace) {
                    (Some(data), _) => Ok(Some(data)),
                    (None, true) => Err(ImdsError::NotYet),
                    (None, false) => Ok(None),
                }
            }
        },
    )
    .await;
    match result {
        Err(ImdsError::NotYet) => Ok(None),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn endpoint_precedence() {
        let all = [
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9/"),
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE", "IPv6"),
        ];
        assert_eq!(
            resolve_endpoint(Some("http://[::1]:8"), env(&all)).unwrap(),
            "http://[::1]:8"
        );
        assert_eq!(
            resolve_endpoint(None, env(&all)).unwrap(),
            "http://127.0.0.1:9"
        );
        assert_eq!(
            resolve_endpoint(None, env(&all[1..])).unwrap(),
            IPV6_ENDPOINT
        );
        assert_eq!(resolve_endpoint(None, env(&[])).unwrap(), DEFAULT_ENDPOINT);
        let off = [("AWS_EC2_METADATA_DISABLED", "true")];
        assert!(
            resolve_endpoint(None, env(&off))
                .unwrap_err()
                .contains("disabled")
        );
        assert!(resolve_endpoint(Some("https://x"), env(&[])).is_err());
        assert_eq!(
            resolve_endpoint(Some("127.0.0.1:1338"), env(&[])).unwrap_err(),
            "--imds-endpoint \"127.0.0.1:1338\" needs http:// (IMDS is plain HTTP): write http://127.0.0.1:1338"
        );
        assert_eq!(
            resolve_endpoint(Some("http://[::1]:8/latest/"), env(&[])).unwrap_err(),
            "--imds-endpoint \"http://[::1]:8/latest/\": give the address alone, without /latest/ (bootstage adds the paths): write http://[::1]:8"
        );
        let no_scheme = [("AWS_EC2_METADATA_SERVICE_ENDPOINT", "169.254.169.254")];
        assert!(
            resolve_endpoint(None, env(&no_scheme))
                .unwrap_err()
                .starts_with("AWS_EC2_METADATA_SERVICE_ENDPOINT=\"169.254.169.254\" needs http://")
        );
        let bad_mode = [("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE", "v7")];
        assert!(resolve_endpoint(None, env(&bad_mode)).is_err());
    }

    #[test]
    fn status_policy() {
        use Request::*;
        let v = |r, s: u16, v2| verdict(r, StatusCode::from_u16(s).unwrap(), v2);
        assert_eq!(v(Token, 200, false), Verdict::Body);
        assert_eq!(v(Token, 403, false), Verdict::Disabled);
        assert_eq!(v(Token, 404, false), Verdict::UseV1);
        assert_eq!(v(Token, 405, true), Verdict::V2Unsupported);
        assert_eq!(v(Token, 400, false), Verdict::Unexpected);
        assert_eq!(v(Get, 401, false), Verdict::TokenRejected);
        assert_eq!(v(Get, 404, true), Verdict::Absent);
        assert_eq!(v(Get, 503, true), Verdict::Retry);
        assert_eq!(v(Token, 500, true), Verdict::Retry);
    }
}
