//! One bounded request to a metadata service, for the providers other than EC2's IMDS
//! (`gcp`, `azure`, `openstack`, Azure's `wireserver`): no proxy, no redirects, each request
//! bounded by the request timeout and the stage deadline, the body read to a limit. What
//! an answer means is each caller's own `verdict`.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;

use super::ImdsError;
use crate::base::retry::Deadline;

/// An HTTP client for a link-local metadata service.
pub(super) fn client(request_timeout: Duration) -> Result<reqwest::Client, ImdsError> {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(request_timeout)
        .build()
        .map_err(|e| ImdsError::Invalid {
            what: "HTTP client".into(),
            why: e.to_string(),
        })
}

pub(super) struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    /// A retryable error for a throttling or failing answer, honouring Retry-After.
    pub fn retry(&self, what: String) -> ImdsError {
        ImdsError::Transient {
            what,
            why: format!("HTTP {}", self.status.as_u16()),
            retry_after: super::parse_retry_after(&self.headers).or(match self.status.as_u16() {
                429 | 503 => Some(super::THROTTLE_WAIT),
                _ => None,
            }),
        }
    }

    /// The Content-Type's media type, lower case, without parameters.
    pub fn media_type(&self) -> String {
        self.headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase())
            .unwrap_or_default()
    }
}

/// One GET of `url` with `headers`; `what` names it in errors. A transport failure or a
/// timeout is transient; a body over `max` bytes is invalid (permanent).
pub(super) async fn get(
    http: &reqwest::Client,
    url: &str,
    what: &str,
    headers: &[(&str, &str)],
    request_timeout: Duration,
    deadline: Deadline,
    max: usize,
) -> Result<Answer, ImdsError> {
    send(http.get(url), what, headers, request_timeout, deadline, max).await
}

/// One POST of `body` to `url`, as [`get`].
#[allow(clippy::too_many_arguments)]
pub(super) async fn post(
    http: &reqwest::Client,
    url: &str,
    body: Vec<u8>,
    what: &str,
    headers: &[(&str, &str)],
    request_timeout: Duration,
    deadline: Deadline,
    max: usize,
) -> Result<Answer, ImdsError> {
    let request = http.post(url).body(body);
    send(request, what, headers, request_timeout, deadline, max).await
}

async fn send(
    request: reqwest::RequestBuilder,
    what: &str,
    headers: &[(&str, &str)],
    request_timeout: Duration,
    deadline: Deadline,
    max: usize,
) -> Result<Answer, ImdsError> {
    let timeout = request_timeout.min(deadline.remaining());
    if timeout.is_zero() {
        return Err(ImdsError::Transient {
            what: what.into(),
            why: "the deadline has passed".into(),
            retry_after: None,
        });
    }
    let transient = |e: reqwest::Error| match e.is_timeout() {
        true => ImdsError::TimedOut(what.into()),
        false => ImdsError::Transient {
            what: what.into(),
            why: super::describe(&e),
            retry_after: None,
        },
    };
    let mut request = request.timeout(timeout);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut response = request.send().await.map_err(transient)?;
    let status = response.status();
    let headers = response.headers().clone();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transient)? {
        body.extend_from_slice(&chunk);
        if body.len() > max {
            return Err(ImdsError::Invalid {
                what: what.into(),
                why: format!("the answer is over {max} bytes"),
            });
        }
    }
    Ok(Answer {
        status,
        headers,
        body,
    })
}

/// A transient or timed-out error, once the deadline is spent, as the stage reports it.
pub(super) fn gave_up(endpoint: &str, deadline: Deadline, e: ImdsError) -> ImdsError {
    match e {
        ImdsError::Transient { .. } | ImdsError::TimedOut(_) => ImdsError::GaveUp {
            endpoint: endpoint.into(),
            budget: deadline.budget(),
            last: Box::new(e),
        },
        e => e,
    }
}
