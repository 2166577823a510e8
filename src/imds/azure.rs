//! Azure's Instance Metadata Service (IMDS), as Microsoft documents it: user-data and
//! facts.
//!
//! - Endpoint: `--imds-endpoint` (`http://HOST[:PORT]`), else `BOOTSTAGE_AZURE_IMDS`
//!   (the same form), else `http://169.254.169.254`; paths below `/metadata/instance`,
//!   each with `?api-version=` [`API_VERSION`].
//! - Every request sends `Metadata: true` (Azure answers 400 without it, and refuses any
//!   request with `X-Forwarded-For`, which we never send).
//! - The parameters: `compute/userData` (`/metadata/instance/compute/userData?
//!   api-version=…&format=text`), which Azure keeps base64-encoded: decoded here, and an
//!   answer that is not base64 is refused (it is not Azure's). Empty (none was given) or
//!   404 is "not there yet" within the grace period, then "no user-data", as on EC2.
//! - The facts, from the instance document (`/metadata/instance?api-version=…`), which
//!   must be a JSON answer (`application/json`; anything else is not Azure's IMDS and is
//!   refused), mapped to EC2's names where they mean the same thing: `compute.vmId` →
//!   instance-id, `location` → region, `zone` → availability-zone (absent when empty),
//!   `vmSize` → instance-type, `subscriptionId` → account-id, `osProfile.computerName`
//!   (else `name`) → local-hostname, the first interface's first private IPv4 address →
//!   local-ipv4 and its `macAddress` → mac (`00:0d:3a:…`, as EC2 writes it),
//!   `tagsList` → tags; and Azure's own `name` → instance-name, `resourceGroupName` →
//!   resource-group.
//! - Azure's IMDS allows about 5 requests a second: retries back off (`retry::BACKOFF`),
//!   throttling (429), `410 Gone` (the service not ready yet) and Azure's 404 for the
//!   instance document (a JSON error: not served yet while the VM is provisioned) are
//!   waited out, with Retry-After when given; every request is bounded by `--request-timeout` and the stage
//!   deadline; no proxy, no redirects.
//!
//! - The lifecycle watcher's scheduled events ([`Client::scheduled_events`],
//!   [`Client::approve`]): `GET /metadata/scheduledevents?api-version=2020-07-01` (the
//!   document: `DocumentIncarnation`, `Events` with `EventId`, `EventType`, `Resources`,
//!   `EventStatus`, `NotBefore` as RFC 1123, e.g. `Mon, 19 Sep 2016 18:29:47 GMT`, blank
//!   once started), and `POST` of `{"StartRequests": [{"EventId": …}]}` to the same URL to
//!   approve an event (200, even when another VM approved it first; 400 for a malformed
//!   one). One request each, no retry (the watcher asks again at its next look), each
//!   bounded by the timeout the caller gives: the first GET enables the service and may
//!   take up to two minutes, as Microsoft documents it.
//!
//! How each answer is handled lives in one place: [`verdict`].

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::Value;

use super::ImdsError;
use super::facts::Facts;
use super::http::{self, Answer};
use crate::base::retry::{self, Deadline};

pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
/// The variable that points bootstage at another Azure IMDS address (tests, a proxy).
pub const ENDPOINT_ENV: &str = "BOOTSTAGE_AZURE_IMDS";
/// A documented version that serves `compute/userData` (2021-01-01 and later).
pub const API_VERSION: &str = "2021-02-01";
pub const INSTANCE_PATH: &str = "/metadata/instance";
pub const USER_DATA_PATH: &str = "/metadata/instance/compute/userData";
pub const METADATA_HEADER: &str = "Metadata";
/// Scheduled events, and the version Microsoft documents as current for them.
pub const SCHEDULED_EVENTS_PATH: &str = "/metadata/scheduledevents";
pub const EVENTS_API_VERSION: &str = "2020-07-01";
/// A scheduled events document lists a handful of events.
const MAX_EVENTS: usize = 1024 * 1024;
/// Azure keeps at most 64 KB of user-data, base64-encoded: read no further than that.
const MAX_USER_DATA: usize = 96 * 1024;
/// The instance document (with storage and network profiles) is a few KiB.
const MAX_DOCUMENT: usize = 1024 * 1024;

/// Picks the endpoint: the flag, then [`ENDPOINT_ENV`], then Azure's address.
pub fn resolve_endpoint(
    flag: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let (chosen, origin) = match (flag, env(ENDPOINT_ENV).filter(|v| !v.is_empty())) {
        (Some(flag), _) => (flag.to_string(), "--imds-endpoint ".to_string()),
        (None, Some(url)) => (url, format!("{ENDPOINT_ENV}=")),
        (None, None) => (DEFAULT_ENDPOINT.to_string(), "Azure IMDS endpoint ".into()),
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
    Unexpected,
}

/// What a 404 means for what was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum If404 {
    /// It may not exist (user-data none was given, the events' document).
    Absent,
    /// Every VM has it (the instance document): Azure's own 404, a JSON error, means it is
    /// not served yet while the VM is provisioned (cloud-init's Azure source retries it
    /// too); a 404 in any other form is not Azure's IMDS (EC2's, a proxy's page).
    NotYet,
}

/// 410 is Azure's "not ready yet, retry" (for up to 70 s after boot), 429 its throttling;
/// a 404 as `if_404` says (`json`: the answer's media type is JSON).
fn verdict(status: StatusCode, json: bool, if_404: If404) -> Verdict {
    match (status.as_u16(), if_404) {
        (200, _) => Verdict::Body,
        (404, If404::NotYet) if json => Verdict::Retry,
        (404, _) => Verdict::Absent,
        (410 | 429 | 500..=599, _) => Verdict::Retry,
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

/// The parts of the instance document the facts come from.
#[derive(Deserialize)]
struct Document {
    compute: Compute,
    #[serde(default)]
    network: Option<Network>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Compute {
    vm_id: Option<String>,
    location: Option<String>,
    zone: Option<String>,
    vm_size: Option<String>,
    subscription_id: Option<String>,
    name: Option<String>,
    resource_group_name: Option<String>,
    os_profile: Option<OsProfile>,
    tags_list: Option<Vec<Tag>>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct OsProfile {
    computer_name: Option<String>,
}

#[derive(Deserialize)]
struct Tag {
    name: String,
    #[serde(default)]
    value: String,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct Network {
    interface: Vec<Interface>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Interface {
    mac_address: Option<String>,
    ipv4: Option<Ipv4>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Ipv4 {
    ip_address: Vec<IpAddress>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct IpAddress {
    private_ip_address: Option<String>,
}

impl Client {
    pub fn new(opts: Options) -> Result<Client, ImdsError> {
        Ok(Client {
            http: http::client(opts.request_timeout)?,
            endpoint: opts.endpoint,
            request_timeout: opts.request_timeout,
            deadline: opts.deadline,
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// `compute/userData`, decoded, polled while it is empty or absent and `grace` has not
    /// passed since the stage started; `Ok(None)` after that.
    pub async fn user_data(
        &self,
        grace: Duration,
        on_wait: impl FnMut(u32, Duration),
    ) -> Result<Option<Vec<u8>>, ImdsError> {
        super::poll_user_data(retry::BACKOFF, self.deadline, grace, on_wait, || async {
            let path = format!("{USER_DATA_PATH}?api-version={API_VERSION}&format=text");
            match self.get(&path, MAX_USER_DATA, If404::Absent).await {
                Ok(answer) => decode_user_data(&path, &answer.body),
                Err(ImdsError::NotFound(_)) => Ok(None),
                Err(e) => Err(e),
            }
        })
        .await
        .map_err(|e| http::gave_up(&self.endpoint, self.deadline, e))
    }

    /// The facts, from the instance document; `compute.vmId` is required. Azure's 404 for
    /// it is waited out with the rest ([`If404::NotYet`]).
    pub async fn facts(&self) -> Result<Facts, ImdsError> {
        let path = format!("{INSTANCE_PATH}?api-version={API_VERSION}");
        let answer = retry::until_deadline(
            retry::BACKOFF,
            self.deadline,
            |_, _, _| {},
            || self.get(&path, MAX_DOCUMENT, If404::NotYet),
        )
        .await
        .map_err(|e| http::gave_up(&self.endpoint, self.deadline, e))?;
        facts_of(&path, &self.endpoint, &answer)
    }

    /// The scheduled events document: one GET within `timeout` (and the deadline), no
    /// retry.
    pub async fn scheduled_events(&self, timeout: Duration) -> Result<ScheduledEvents, ImdsError> {
        let path = format!("{SCHEDULED_EVENTS_PATH}?api-version={EVENTS_API_VERSION}");
        let what = format!("GET {path}");
        let answer = http::get(
            &self.http,
            &format!("{}{path}", self.endpoint),
            &what,
            &[(METADATA_HEADER, "true")],
            timeout,
            self.deadline,
            MAX_EVENTS,
        )
        .await?;
        let answer = judged(what.clone(), answer, If404::Absent)?;
        scheduled_events(&answer.body).map_err(|why| ImdsError::Invalid { what, why })
    }

    /// Approves the events `ids` (`StartRequests`): one POST within `timeout`, no retry.
    pub async fn approve(&self, ids: &[String], timeout: Duration) -> Result<(), ImdsError> {
        let path = format!("{SCHEDULED_EVENTS_PATH}?api-version={EVENTS_API_VERSION}");
        let what = format!("POST {path}");
        let answer = http::post(
            &self.http,
            &format!("{}{path}", self.endpoint),
            start_requests(ids),
            &what,
            &[
                (METADATA_HEADER, "true"),
                ("Content-Type", "application/json"),
            ],
            timeout,
            self.deadline,
            MAX_EVENTS,
        )
        .await?;
        judged(what, answer, If404::Absent).map(|_| ())
    }

    /// One GET of `path` (with its query), `Metadata: true` sent.
    async fn get(&self, path: &str, max: usize, if_404: If404) -> Result<Answer, ImdsError> {
        let what = format!("GET {path}");
        let answer = http::get(
            &self.http,
            &format!("{}{path}", self.endpoint),
            &what,
            &[(METADATA_HEADER, "true")],
            self.request_timeout,
            self.deadline,
            max,
        )
        .await?;
        judged(what, answer, if_404)
    }
}

/// An answer as [`verdict`] reads it: the answer itself when it has a body to use.
fn judged(what: String, answer: Answer, if_404: If404) -> Result<Answer, ImdsError> {
    let json = answer.media_type() == "application/json";
    match verdict(answer.status, json, if_404) {
        Verdict::Body => Ok(answer),
        Verdict::Absent => Err(ImdsError::NotFound(what)),
        Verdict::Retry => Err(answer.retry(what)),
        Verdict::Unexpected => Err(ImdsError::Unexpected {
            what,
            status: answer.status.as_u16(),
        }),
    }
}

/// The scheduled events document.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScheduledEvents {
    /// `DocumentIncarnation`: grows whenever the events change.
    pub incarnation: u64,
    pub events: Vec<ScheduledEvent>,
}

/// One scheduled event, as Microsoft documents its fields.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScheduledEvent {
    pub id: String,
    /// `EventType`: `Reboot`, `Redeploy`, `Freeze`, `Preempt` or `Terminate`.
    pub kind: String,
    /// `EventStatus`: `Scheduled`, or `Started`.
    pub status: String,
    /// The VMs it affects (their names, `compute.name`).
    pub resources: Vec<String>,
    /// `NotBefore` as served, RFC 1123 (blank once the event started).
    pub not_before: String,
    /// `EventSource`: `Platform` or `User`.
    pub source: String,
    /// The event as served, for the hooks and the notices.
    pub raw: Value,
}

/// The document from its body; an event without an `EventId` is left out, and a body
/// that is not the document is refused.
pub fn scheduled_events(body: &[u8]) -> Result<ScheduledEvents, String> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| format!("not JSON (line {} column {})", e.line(), e.column()))?;
    let incarnation = value
        .get("DocumentIncarnation")
        .and_then(Value::as_u64)
        .ok_or("no DocumentIncarnation: not a scheduled events document")?;
    let Some(Value::Array(list)) = value.get("Events") else {
        return Err("no Events array: not a scheduled events document".into());
    };
    let events = list
        .iter()
        .filter_map(|raw| {
            let text = |k: &str| raw.get(k).and_then(Value::as_str).map(str::to_string);
            let not_before = text("NotBefore").unwrap_or_default();
            Some(ScheduledEvent {
                id: text("EventId").filter(|id| !id.is_empty())?,
                kind: text("EventType").unwrap_or_default(),
                status: text("EventStatus").unwrap_or_default(),
                resources: raw
                    .get("Resources")
                    .and_then(Value::as_array)
                    .map(|r| {
                        r.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
                not_before,
                source: text("EventSource").unwrap_or_default(),
                raw: raw.clone(),
            })
        })
        .collect();
    Ok(ScheduledEvents {
        incarnation,
        events,
    })
}

/// The body that approves `ids`: `{"StartRequests": [{"EventId": …}, …]}`.
pub fn start_requests(ids: &[String]) -> Vec<u8> {
    let requests: Vec<Value> = ids
        .iter()
        .map(|id| serde_json::json!({ "EventId": id }))
        .collect();
    serde_json::json!({ "StartRequests": requests })
        .to_string()
        .into_bytes()
}

/// The user-data as Azure serves it, base64 (whitespace ignored); `None` when empty.
fn decode_user_data(path: &str, body: &[u8]) -> Result<Option<Vec<u8>>, ImdsError> {
    let text: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if text.is_empty() {
        return Ok(None);
    }
    base64::engine::general_purpose::STANDARD
        .decode(&text)
        .map(Some)
        .map_err(|_| ImdsError::Invalid {
            what: format!("GET {path}"),
            why: "not base64, as Azure's IMDS serves userData: refusing it".into(),
        })
}

/// The facts from an instance document's answer; one that is not JSON is not Azure's.
fn facts_of(path: &str, endpoint: &str, answer: &Answer) -> Result<Facts, ImdsError> {
    let what = format!("GET {path}");
    let not_azure = |why: String| ImdsError::Invalid {
        what: what.clone(),
        why: format!("{why}, so {endpoint} is not Azure's IMDS; refusing it"),
    };
    let media = answer.media_type();
    if media != "application/json" {
        return Err(not_azure(format!("the answer is {media:?}, not JSON")));
    }
    let doc: Document = serde_json::from_slice(&answer.body).map_err(|e| {
        not_azure(format!(
            "the answer is not the instance document (line {} column {})",
            e.line(),
            e.column()
        ))
    })?;
    let c = doc.compute;
    let present = |v: Option<String>| v.map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
    let instance_id =
        present(c.vm_id).ok_or_else(|| ImdsError::NotFound(format!("{what}: compute.vmId")))?;
    let nic = doc.network.and_then(|n| n.interface.into_iter().next());
    let (mac, ip) = match nic {
        Some(nic) => (
            present(nic.mac_address).map(|m| mac_of(&m)),
            nic.ipv4
                .and_then(|v4| v4.ip_address.into_iter().next())
                .and_then(|a| present(a.private_ip_address)),
        ),
        None => (None, None),
    };
    let tags = c.tags_list.map(|list| {
        list.into_iter()
            .map(|t| (t.name, t.value))
            .collect::<BTreeMap<_, _>>()
    });
    Ok(Facts {
        source: "azure".into(),
        instance_id: Some(instance_id),
        region: present(c.location),
        availability_zone: present(c.zone),
        instance_type: present(c.vm_size),
        account_id: present(c.subscription_id),
        local_hostname: present(c.os_profile.and_then(|p| p.computer_name))
            .or(present(c.name.clone())),
        instance_name: present(c.name),
        resource_group: present(c.resource_group_name),
        local_ipv4: ip,
        mac,
        tags,
        ..Facts::default()
    })
}

/// Azure writes a MAC as `000D3AF806EC`; EC2 and GCP as `00:0d:3a:f8:06:ec`. Anything
/// else is kept as it is, in lower case.
fn mac_of(azure: &str) -> String {
    let hex = azure.to_ascii_lowercase();
    match hex.len() == 12 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        true => hex
            .as_bytes()
            .chunks(2)
            .map(|pair| String::from_utf8_lossy(pair).into_owned())
            .collect::<Vec<_>>()
            .join(":"),
        false => hex,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers() {
        let v = |s: u16| verdict(StatusCode::from_u16(s).unwrap(), true, If404::Absent);
        assert_eq!(v(200), Verdict::Body);
        assert_eq!(v(404), Verdict::Absent);
        // What every VM has: Azure's own (JSON) 404 is "not yet", any other not Azure's.
        let document = |json| verdict(StatusCode::NOT_FOUND, json, If404::NotYet);
        assert_eq!(document(true), Verdict::Retry);
        assert_eq!(document(false), Verdict::Absent);
        assert_eq!(v(410), Verdict::Retry);
        assert_eq!(v(429), Verdict::Retry);
        assert_eq!(v(503), Verdict::Retry);
        assert_eq!(v(400), Verdict::Unexpected);
        assert_eq!(v(301), Verdict::Unexpected);
    }

    #[test]
    fn user_data_is_base64() {
        assert_eq!(decode_user_data("p", b"").unwrap(), None);
        assert_eq!(decode_user_data("p", b" \n").unwrap(), None);
        assert_eq!(
            decode_user_data("p", b"eyJhIjox\nfQ==\n")
                .unwrap()
                .as_deref(),
            Some(&b"{\"a\":1}"[..])
        );
        assert_eq!(
            decode_user_data("p", b"<html>").unwrap_err().to_string(),
            "GET p: invalid answer: not base64, as Azure's IMDS serves userData: refusing it"
        );
    }

    #[test]
    fn scheduled_events_read() {
        let doc = scheduled_events(
            br#"{"DocumentIncarnation": 2, "Events": [
                {"EventId": "C7061BAC-AFDC-4513-B24B-AA5F13A16123", "EventStatus": "Scheduled",
                 "EventType": "Freeze", "ResourceType": "VirtualMachine",
                 "Resources": ["WestNO_0", "WestNO_1"], "NotBefore": "Mon, 11 Apr 2026 22:26:58 GMT",
                 "Description": "Virtual machine is being paused", "EventSource": "Platform",
                 "DurationInSeconds": 5},
                {"EventType": "Reboot"}]}"#,
        )
        .unwrap();
        assert_eq!(doc.incarnation, 2);
        assert_eq!(doc.events.len(), 1, "an event without an id is left out");
        let e = &doc.events[0];
        assert_eq!(
            (
                e.id.as_str(),
                e.kind.as_str(),
                e.status.as_str(),
                e.source.as_str()
            ),
            (
                "C7061BAC-AFDC-4513-B24B-AA5F13A16123",
                "Freeze",
                "Scheduled",
                "Platform"
            )
        );
        assert_eq!(e.resources, ["WestNO_0", "WestNO_1"]);
        assert_eq!(e.not_before, "Mon, 11 Apr 2026 22:26:58 GMT");
        assert_eq!(e.raw["DurationInSeconds"], 5);
        assert_eq!(
            scheduled_events(br#"{"DocumentIncarnation": 1, "Events": []}"#).unwrap(),
            ScheduledEvents {
                incarnation: 1,
                events: vec![]
            }
        );
        assert_eq!(
            scheduled_events(b"<html>").unwrap_err(),
            "not JSON (line 1 column 1)"
        );
        assert_eq!(
            scheduled_events(br#"{"Events": []}"#).unwrap_err(),
            "no DocumentIncarnation: not a scheduled events document"
        );
        assert_eq!(
            String::from_utf8(start_requests(&["a".into(), "b\"".into()])).unwrap(),
            r#"{"StartRequests":[{"EventId":"a"},{"EventId":"b\""}]}"#
        );
    }

    #[test]
    fn macs_as_ec2_writes_them() {
        assert_eq!(mac_of("000D3AF806EC"), "00:0d:3a:f8:06:ec");
        assert_eq!(mac_of("00-0D-3A"), "00-0d-3a");
    }

    #[test]
    fn endpoint_precedence() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| vars.iter().find(|v| v.0 == k).map(|v| v.1.to_string())
        };
        let set = &[(ENDPOINT_ENV, "http://127.0.0.1:8080/")];
        assert_eq!(
            resolve_endpoint(Some("http://[::1]:8"), env(set)).unwrap(),
            "http://[::1]:8"
        );
        assert_eq!(
            resolve_endpoint(None, env(set)).unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(resolve_endpoint(None, env(&[])).unwrap(), DEFAULT_ENDPOINT);
        assert_eq!(
            resolve_endpoint(None, env(&[(ENDPOINT_ENV, "127.0.0.1:1")])).unwrap_err(),
            "BOOTSTAGE_AZURE_IMDS=\"127.0.0.1:1\" needs http:// (IMDS is plain HTTP): write http://127.0.0.1:1"
        );
    }
}
