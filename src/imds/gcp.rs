//! Compute Engine's metadata server, as Google documents it: user-data and facts.
//!
//! - Endpoint: `--imds-endpoint` (`http://HOST[:PORT]`), else `GCE_METADATA_HOST`
//!   (`HOST[:PORT]`, no scheme, as Google's client libraries read it), else
//!   `http://metadata.google.internal`; paths below `/computeMetadata/v1/`.
//! - Every request sends `Metadata-Flavor: Google`; an answer we would use (a body, or a
//!   404 read as "absent") must carry `Metadata-Flavor: Google` too, else it is not
//!   Google's metadata server and is refused (a permanent error).
//! - The parameters: the instance attribute `bootstage`, else `user-data`; both absent is
//!   "not there yet" within the grace period, then "no user-data", as on EC2.
//! - The facts, mapped to the names EC2's facts use where they mean the same thing:
//!   `instance/id` → instance-id, `instance/zone` (`projects/N/zones/Z`) →
//!   availability-zone Z and region (Z without its last `-x`), `instance/machine-type` →
//!   instance-type, `instance/network-interfaces/0/ip` → local-ipv4, `…/0/mac` → mac,
//!   `instance/hostname` → local-hostname; `project/project-id` → project-id (GCP's own).
//! - Every request is bounded by `--request-timeout` and the stage deadline, with the
//!   retry policy of `base::retry`, as `imds::Client` does; no proxy, no redirects.
//! - The lifecycle watcher's long polls ([`Client::wait_for_change`]), as Google recommends
//!   for `instance/preempted` and `instance/maintenance-event`: `?wait_for_change=true&
//!   timeout_sec=N`, with `last_etag=` the ETag of the previous answer, so a change between
//!   two polls is answered at once rather than missed; each request is bounded by
//!   `timeout_sec` plus [`WAIT_MARGIN`]. [`wait_query`] builds the query.
//!
//! How each answer is handled lives in one place: [`verdict`].

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;

use super::ImdsError;
use super::facts::Facts;
use crate::base::retry::{self, Deadline};

pub const DEFAULT_ENDPOINT: &str = "http://metadata.google.internal";
pub const PREFIX: &str = "/computeMetadata/v1/";
pub const FLAVOR_HEADER: &str = "metadata-flavor";
pub const FLAVOR: &str = "Google";
/// The instance attributes that hold the parameters, in order of preference.
pub const USER_DATA_ATTRIBUTES: [&str; 2] = ["bootstage", "user-data"];
/// Attribute values are at most 256 KiB on GCE; read no further.
const MAX_BODY: usize = 256 * 1024;
/// A long poll's request may take this much longer than the `timeout_sec` it asked for.
pub const WAIT_MARGIN: Duration = Duration::from_secs(5);

/// One long-polled answer: the value (trimmed) and its ETag, if the server sent one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waited {
    pub value: String,
    pub etag: Option<String>,
}

/// The query of a long poll: wait for a change, at most `timeout_sec`, from the value
/// whose ETag is `last_etag` (a differing ETag answers at once). An ETag is
/// percent-encoded but for the URL's unreserved characters.
pub fn wait_query(last_etag: Option<&str>, timeout_sec: u64) -> String {
    let mut query = format!("wait_for_change=true&timeout_sec={timeout_sec}");
    if let Some(etag) = last_etag {
        query.push_str("&last_etag=");
        for b in etag.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    query.push(b as char)
                }
                b => query.push_str(&format!("%{b:02X}")),
            }
        }
    }
    query
}

/// Picks the endpoint: the flag, then Google's client libraries' variable.
pub fn resolve_endpoint(
    flag: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let (chosen, origin) = match (flag, env("GCE_METADATA_HOST").filter(|v| !v.is_empty())) {
        (Some(flag), _) => (flag.to_string(), "--imds-endpoint ".to_string()),
        (None, Some(host)) => {
            if host.contains("://") || host.contains('/') {
                return Err(format!(
                    "GCE_METADATA_HOST={host:?}: expected HOST[:PORT] without a scheme or a path, as Google's client libraries read it"
                ));
            }
            (format!("http://{host}"), "GCE_METADATA_HOST=".to_string())
        }
        (None, None) => (DEFAULT_ENDPOINT.to_string(), "metadata endpoint ".into()),
    };
    super::check_endpoint(&chosen).map_err(|why| format!("{origin}{chosen:?}{why}"))?;
    Ok(chosen.trim_end_matches('/').to_string())
}

/// What an answer means.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Body,
    Absent,
    Retry,
    NotGoogle,
    Unexpected,
}

/// `flavored`: the answer carries `Metadata-Flavor: Google`. Throttling and server errors
/// are retried whoever sent them; what we would act on must be Google's.
fn verdict(status: StatusCode, flavored: bool) -> Verdict {
    match (status.as_u16(), flavored) {
        (429 | 500..=599, _) => Verdict::Retry,
        (200 | 404, false) => Verdict::NotGoogle,
        (200, true) => Verdict::Body,
        (404, true) => Verdict::Absent,
        _ => Verdict::Unexpected,
    }
}

pub struct Options {
    pub endpoint: String,
    pub request_timeout: Duration,
    pub deadline: Deadline,
}

pub struct Client {
    http: reqwest::Client,
    endpoint: String,
    request_timeout: Duration,
    deadline: Deadline,
}

impl Client {
    pub fn new(opts: Options) -> Result<Client, ImdsError> {
        Ok(Client {
            http: super::http::client(opts.request_timeout)?,
            endpoint: opts.endpoint,
            request_timeout: opts.request_timeout,
            deadline: opts.deadline,
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The parameters' attribute (`bootstage`, else `user-data`), polled while neither is
    /// there and `grace` has not passed since the stage started; `Ok(None)` after that.
    pub async fn user_data(
        &self,
        grace: Duration,
        on_wait: impl FnMut(u32, Duration),
    ) -> Result<Option<Vec<u8>>, ImdsError> {
        super::poll_user_data(retry::POLL, self.deadline, grace, on_wait, || async {
            for name in USER_DATA_ATTRIBUTES {
                match self.get(&format!("instance/attributes/{name}")).await {
                    Ok(body) => return Ok(Some(body)),
                    Err(ImdsError::NotFound(_)) => continue,
                    Err(e) => return Err(e),
                }
            }
            Ok(None)
        })
        .await
        .map_err(|e| self.gave_up(e))
    }

    /// The facts; `instance/id` is required, the rest is `None` where the server has none.
    pub async fn facts(&self) -> Result<Facts, ImdsError> {
        let (id, zone, machine_type, project, hostname, ip, mac) = tokio::join!(
            self.text("instance/id"),
            self.text("instance/zone"),
            self.text("instance/machine-type"),
            self.text("project/project-id"),
            self.text("instance/hostname"),
            self.text("instance/network-interfaces/0/ip"),
            self.text("instance/network-interfaces/0/mac"),
        );
        let instance_id = id?.ok_or_else(|| ImdsError::NotFound("GET instance/id".into()))?;
        let zone = zone?.map(|z| last_segment(&z));
        Ok(Facts {
            source: "gcp".into(),
            instance_id: Some(instance_id),
            region: zone.as_deref().and_then(region_of),
            availability_zone: zone,
            instance_type: machine_type?.map(|t| last_segment(&t)),
            local_ipv4: ip?,
            local_hostname: hostname?,
            mac: mac?,
            project_id: project?,
            ..Facts::default()
        })
    }

    /// One text item (trimmed), retried until the deadline; `None` for a 404.
    async fn text(&self, path: &str) -> Result<Option<String>, ImdsError> {
        let got = retry::until_deadline(
            retry::BACKOFF,
            self.deadline,
            |_, _, _| {},
            || self.get(path),
        )
        .await;
        match got {
            Ok(body) => Ok(Some(String::from_utf8_lossy(&body).trim().to_string())),
            Err(ImdsError::NotFound(_)) => Ok(None),
            Err(e) => Err(self.gave_up(e)),
        }
    }

    /// One long poll of `path` (no retry: the caller polls again): the value once it
    /// differs from the one `last_etag` names, or when `timeout_sec` passes; `None` for a
    /// 404. Bounded by `timeout_sec` + [`WAIT_MARGIN`], not by `--request-timeout`.
    pub async fn wait_for_change(
        &self,
        path: &str,
        last_etag: Option<&str>,
        timeout_sec: u64,
    ) -> Result<Option<Waited>, ImdsError> {
        let query = wait_query(last_etag, timeout_sec);
        let timeout = Duration::from_secs(timeout_sec) + WAIT_MARGIN;
        match self.request(path, Some(&query), timeout).await {
            Ok((body, etag)) => Ok(Some(Waited {
                value: String::from_utf8_lossy(&body).trim().to_string(),
                etag,
            })),
            Err(ImdsError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn gave_up(&self, e: ImdsError) -> ImdsError {
        super::http::gave_up(&self.endpoint, self.deadline, e)
    }

    /// One GET of a path below [`PREFIX`].
    async fn get(&self, path: &str) -> Result<Vec<u8>, ImdsError> {
        let (body, _) = self.request(path, None, self.request_timeout).await?;
        Ok(body)
    }

    /// One GET of a path below [`PREFIX`], with a query, within `timeout` (and the
    /// deadline): the body and the answer's ETag.
    async fn request(
        &self,
        path: &str,
        query: Option<&str>,
        timeout: Duration,
    ) -> Result<(Vec<u8>, Option<String>), ImdsError> {
        let what = format!("GET {path}");
        let url = match query {
            Some(query) => format!("{}{PREFIX}{path}?{query}", self.endpoint),
            None => format!("{}{PREFIX}{path}", self.endpoint),
        };
        let answer = super::http::get(
            &self.http,
            &url,
            &what,
            &[(FLAVOR_HEADER, FLAVOR)],
            timeout,
            self.deadline,
            MAX_BODY,
        )
        .await?;
        let (status, flavored) = (answer.status, flavored(&answer.headers));
        let etag = answer
            .headers
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        match verdict(status, flavored) {
            Verdict::Body => Ok((answer.body, etag)),
            Verdict::Absent => Err(ImdsError::NotFound(what)),
            Verdict::Retry => Err(answer.retry(what)),
            Verdict::NotGoogle => Err(ImdsError::NotGoogle {
                what,
                endpoint: self.endpoint.clone(),
            }),
            Verdict::Unexpected => Err(ImdsError::Unexpected {
                what,
                status: status.as_u16(),
            }),
        }
    }
}

fn flavored(headers: &HeaderMap) -> bool {
    headers
        .get(FLAVOR_HEADER)
        .is_some_and(|v| v.as_bytes() == FLAVOR.as_bytes())
}

/// `projects/123/zones/us-central1-a` → `us-central1-a`.
fn last_segment(value: &str) -> String {
    value.rsplit('/').next().unwrap_or(value).to_string()
}

/// A zone's region: `us-central1-a` → `us-central1`.
fn region_of(zone: &str) -> Option<String> {
    zone.rsplit_once('-')
        .map(|(region, _)| region.to_string())
        .filter(|r| !r.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers() {
        let v = |s: u16, f| verdict(StatusCode::from_u16(s).unwrap(), f);
        assert_eq!(v(200, true), Verdict::Body);
        assert_eq!(v(200, false), Verdict::NotGoogle);
        assert_eq!(v(404, true), Verdict::Absent);
        assert_eq!(v(404, false), Verdict::NotGoogle);
        assert_eq!(v(503, false), Verdict::Retry);
        assert_eq!(v(429, true), Verdict::Retry);
        assert_eq!(v(403, true), Verdict::Unexpected);
        assert_eq!(v(301, true), Verdict::Unexpected);
    }

    #[test]
    fn long_poll_queries() {
        assert_eq!(wait_query(None, 60), "wait_for_change=true&timeout_sec=60");
        assert_eq!(
            wait_query(Some("f4a8b2c1d0e9"), 300),
            "wait_for_change=true&timeout_sec=300&last_etag=f4a8b2c1d0e9"
        );
        assert_eq!(
            wait_query(Some("a b&c=\"d\"/é"), 1),
            "wait_for_change=true&timeout_sec=1&last_etag=a%20b%26c%3D%22d%22%2F%C3%A9"
        );
    }

    #[test]
    fn names_from_paths() {
        assert_eq!(
            last_segment("projects/123456789012/zones/us-central1-a"),
            "us-central1-a"
        );
        assert_eq!(
            last_segment("projects/1/machineTypes/e2-medium"),
            "e2-medium"
        );
        assert_eq!(region_of("europe-west4-b").as_deref(), Some("europe-west4"));
        assert_eq!(region_of("nodash"), None);
    }

    #[test]
    fn endpoint_precedence() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| vars.iter().find(|v| v.0 == k).map(|v| v.1.to_string())
        };
        let host = &[("GCE_METADATA_HOST", "127.0.0.1:8080")];
        assert_eq!(
            resolve_endpoint(Some("http://[::1]:8/"), env(host)).unwrap(),
            "http://[::1]:8"
        );
        assert_eq!(
            resolve_endpoint(None, env(host)).unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(resolve_endpoint(None, env(&[])).unwrap(), DEFAULT_ENDPOINT);
        assert_eq!(
            resolve_endpoint(None, env(&[("GCE_METADATA_HOST", "")])).unwrap(),
            DEFAULT_ENDPOINT
        );
        assert_eq!(
            resolve_endpoint(None, env(&[("GCE_METADATA_HOST", "http://127.0.0.1:1")]))
                .unwrap_err(),
            "GCE_METADATA_HOST=\"http://127.0.0.1:1\": expected HOST[:PORT] without a scheme or a path, as Google's client libraries read it"
        );
        assert!(
            resolve_endpoint(Some("http://h/computeMetadata/v1/"), env(&[]))
                .unwrap_err()
                .starts_with(
                    "--imds-endpoint \"http://h/computeMetadata/v1/\": give the address alone"
                )
        );
    }
}
