//! Compute Engine's metadata server, with `flavor: gcp` (see the crate's documentation).
//!
//! The instance's interruption events, as Google documents them: `instance/preempted`
//! (`FALSE`, `TRUE` once a Spot or preemptible VM is being preempted) and
//! `instance/maintenance-event` (`NONE`, `MIGRATE_ON_HOST_MAINTENANCE`,
//! `TERMINATE_ON_HOST_MAINTENANCE`), from `gcp.preempted` and `gcp.maintenance_event`.
//! Each answer carries an `ETag` (a hash of the key, its value and its change count, so
//! every change has a new one). `?wait_for_change=true` holds the request until the value
//! changes: at once when `last_etag=` names another ETag than the current one, else at the
//! next change, or after `timeout_sec` (default 60) with the value unchanged.
//!
//! A test changes them while running with `Emulator::set_gcp` (or `PUT
//! /_emulator/gcp/instance/preempted`, body the value), which wakes the waiting requests
//! and is logged in `changes` as EC2's paths are; `Emulator::gcp_waiting` says how many
//! long polls are being held.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::{Config, Emulator, Reply, Shared, answer, lock};

/// The keys (below `/computeMetadata/v1/`) that `set_gcp` changes and long polls watch.
pub const GCP_SETTABLE: [&str; 2] = ["instance/preempted", "instance/maintenance-event"];
/// A long poll without `timeout_sec` waits at most this long.
const DEFAULT_WAIT: Duration = Duration::from_secs(60);

pub(crate) const FLAVOR_HEADER: &str = "metadata-flavor";
const PREFIX: &str = "/computeMetadata/v1/";

/// The request carries `Metadata-Flavor: Google`.
pub(crate) fn flavored(headers: &HeaderMap) -> bool {
    headers
        .get(FLAVOR_HEADER)
        .is_some_and(|v| v.as_bytes() == b"Google")
}

/// The Compute Engine instance the emulator describes with `flavor: gcp`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct GcpInstance {
    pub id: String,
    pub zone: String,
    pub machine_type: String,
    pub project_id: String,
    pub numeric_project_id: String,
    pub hostname: String,
    pub ip: String,
    pub mac: String,
    /// The attribute the user-data is served as: `bootstage` or `user-data`.
    pub user_data_attribute: String,
    /// Other instance attributes, served as they are.
    pub attributes: BTreeMap<String, String>,
    /// `instance/preempted`: `FALSE`, or `TRUE` while the VM is being preempted.
    pub preempted: String,
    /// `instance/maintenance-event`: `NONE`, `MIGRATE_ON_HOST_MAINTENANCE` or
    /// `TERMINATE_ON_HOST_MAINTENANCE`.
    pub maintenance_event: String,
}

impl GcpInstance {
    fn event(&self, key: &str) -> Option<&str> {
        match key {
            "instance/preempted" => Some(&self.preempted),
            "instance/maintenance-event" => Some(&self.maintenance_event),
            _ => None,
        }
    }
}

/// What the long polls share: each key's change count, the wake-up of the waiting
/// requests, and how many wait.
#[derive(Default)]
pub(crate) struct Live {
    versions: std::sync::Mutex<BTreeMap<&'static str, u64>>,
    changed: tokio::sync::Notify,
    waiting: AtomicUsize,
}

/// Counts a held request while it lives.
struct Held<'a>(&'a AtomicUsize);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The query's parameters that a long poll reads.
#[derive(Debug, Default, PartialEq, Eq)]
struct Wait {
    wait_for_change: bool,
    timeout: Option<Duration>,
    last_etag: Option<String>,
}

fn parse_wait(query: Option<&str>) -> Wait {
    let mut wait = Wait::default();
    for pair in query.unwrap_or_default().split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "wait_for_change" => wait.wait_for_change = v.eq_ignore_ascii_case("true"),
            "timeout_sec" => wait.timeout = v.parse().ok().map(Duration::from_secs),
            "last_etag" => wait.last_etag = Some(unescape(v)),
            _ => {}
        }
    }
    wait
}

/// A query value, `%XX` decoded.
fn unescape(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        let hex = |b: Option<u8>| (b? as char).to_digit(16);
        match b {
            b'%' => {
                let mut ahead = bytes.clone();
                match (hex(ahead.next()), hex(ahead.next())) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        bytes = ahead;
                    }
                    _ => out.push(b),
                }
            }
            b => out.push(b),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A key's ETag: new at each change.
fn etag(key: &str, value: &str, version: u64) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (key, value, version).hash(&mut h);
    format!("{:016x}", h.finish())
}

impl Emulator {
    /// Sets `instance/preempted` or `instance/maintenance-event` (one of [`GCP_SETTABLE`])
    /// now: the long polls waiting on it answer at once. Logged in `changes`.
    ///
    /// # Panics
    /// On any other key: a mistake in the test.
    pub fn set_gcp(&self, key: &str, value: &str) {
        let Some(key) = GCP_SETTABLE.into_iter().find(|k| *k == key) else {
            panic!("{key:?} is not a settable GCP key (one of {GCP_SETTABLE:?})");
        };
        self.shared.set_gcp(key, value.to_string(), "api");
    }

    /// How many long polls (`wait_for_change=true`) are being held now.
    pub fn gcp_waiting(&self) -> usize {
        self.shared.gcp.waiting.load(Ordering::SeqCst)
    }
}

impl Default for GcpInstance {
    fn default() -> Self {
        GcpInstance {
            id: "4520031799277581759".into(),
            zone: "europe-west4-b".into(),
            machine_type: "e2-medium".into(),
            project_id: "bootstage-test".into(),
            numeric_project_id: "123456789012".into(),
            hostname: "web-1.europe-west4-b.c.bootstage-test.internal".into(),
            ip: "10.164.0.2".into(),
            mac: "42:01:0a:a4:00:02".into(),
            user_data_attribute: "bootstage".into(),
            attributes: BTreeMap::new(),
            preempted: "FALSE".into(),
            maintenance_event: "NONE".into(),
        }
    }
}

impl Shared {
    /// A request to Compute Engine's metadata server, once the scripted hangs and 503s
    /// are past: every answer carries `Metadata-Flavor: Google` unless
    /// `omit_flavor_header`.
    pub(crate) fn gcp(
        self: &Arc<Self>,
        config: &Config,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Reply {
        let omit = config.omit_flavor_header;
        let flavor = move |reply| match reply {
            Reply::Answer(status, mut extra, body) => {
                if !omit {
                    extra.push((FLAVOR_HEADER, "Google".into()));
                }
                extra.push(("content-type", "application/text".into()));
                Reply::Answer(status, extra, body)
            }
            other => other,
        };
        match self.serve_gcp(config, method, path, query, headers) {
            Reply::Wait(later) => Reply::Wait(Box::pin(async move { flavor(later.await) })),
            reply => flavor(reply),
        }
    }

    /// A key's value and ETag now.
    fn gcp_now(&self, key: &'static str) -> (String, String) {
        let value = lock(&self.config)
            .gcp
            .event(key)
            .unwrap_or_default()
            .to_string();
        let version = lock(&self.gcp.versions).get(key).copied().unwrap_or(0);
        let tag = etag(key, &value, version);
        (value, tag)
    }

    /// Sets a key, logs the change and wakes the long polls.
    fn set_gcp(&self, key: &'static str, value: String, by: &str) {
        {
            let mut config = lock(&self.config);
            match key {
                "instance/preempted" => config.gcp.preempted = value.clone(),
                _ => config.gcp.maintenance_event = value.clone(),
            }
            *lock(&self.gcp.versions).entry(key).or_default() += 1;
            // Under the config's lock: the log's order is the order the values applied.
            self.log_change(key, Some(value), by);
        }
        self.gcp.changed.notify_waiters();
    }

    /// `PUT /_emulator/gcp/KEY` (body: the value).
    pub(crate) fn gcp_control(&self, method: &Method, key: &str, body: Bytes) -> Response {
        let Some(key) = GCP_SETTABLE
            .into_iter()
            .find(|k| *k == key.trim_matches('/'))
        else {
            let why = format!(
                "{key:?} is not a settable GCP key (one of {})\n",
                GCP_SETTABLE.join(", ")
            );
            return (StatusCode::NOT_FOUND, why).into_response();
        };
        if *method != Method::PUT {
            return StatusCode::METHOD_NOT_ALLOWED.into_response();
        }
        let value = String::from_utf8_lossy(&body).trim().to_string();
        self.set_gcp(key, value, "control");
        StatusCode::NO_CONTENT.into_response()
    }

    /// An interruption key: its value with its ETag, now or, with `wait_for_change`, once
    /// it differs from `last_etag` (else from the value at arrival), or at the timeout.
    fn gcp_event(self: &Arc<Self>, key: &'static str, query: Option<&str>) -> Reply {
        let answer_now = |(value, tag): (String, String)| {
            Reply::Answer(StatusCode::OK, vec![("etag", tag)], value.into_bytes())
        };
        let wait = parse_wait(query);
        let now = self.gcp_now(key);
        if !wait.wait_for_change {
            return answer_now(now);
        }
        let from = wait.last_etag.unwrap_or_else(|| now.1.clone());
        if from != now.1 {
            return answer_now(now);
        }
        let shared = self.clone();
        let until = tokio::time::Instant::now() + wait.timeout.unwrap_or(DEFAULT_WAIT);
        Reply::Wait(Box::pin(async move {
            shared.gcp.waiting.fetch_add(1, Ordering::SeqCst);
            let _held = Held(&shared.gcp.waiting);
            loop {
                let changed = shared.gcp.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                let now = shared.gcp_now(key);
                if now.1 != from {
                    return answer_now(now);
                }
                tokio::select! {
                    _ = changed => {}
                    _ = tokio::time::sleep_until(until) => return answer_now(shared.gcp_now(key)),
                }
            }
        }))
    }

    /// Compute Engine's metadata server (flavor `gcp`).
    fn serve_gcp(
        self: &Arc<Self>,
        config: &Config,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Reply {
        let flavored = headers
            .get(FLAVOR_HEADER)
            .is_some_and(|v| v.as_bytes() == b"Google");
        if !flavored || headers.contains_key("x-forwarded-for") {
            return answer(
                StatusCode::FORBIDDEN,
                "Your client does not have permission to get URL from this server. Missing Metadata-Flavor:Google header.\n",
            );
        }
        if *method != Method::GET {
            return answer(StatusCode::METHOD_NOT_ALLOWED, "");
        }
        let g = &config.gcp;
        let text = |s: &str| answer(StatusCode::OK, s);
        let Some(item) = path.strip_prefix(PREFIX) else {
            return answer(StatusCode::NOT_FOUND, "");
        };
        if let Some(key) = GCP_SETTABLE.into_iter().find(|k| *k == item) {
            return self.gcp_event(key, query);
        }
        let user_data = self.user_data_now(config);
        if let Some(name) = item.strip_prefix("instance/attributes/") {
            let mut attributes: BTreeMap<&str, Vec<u8>> = g
                .attributes
                .iter()
                .map(|(k, v)| (k.as_str(), v.clone().into_bytes()))
                .collect();
            if let Some(data) = user_data {
                attributes.insert(g.user_data_attribute.as_str(), data);
            }
            return match name {
                "" => text(&attributes.keys().copied().collect::<Vec<_>>().join("\n")),
                name => match attributes.remove(name) {
                    Some(value) => answer(StatusCode::OK, value),
                    None => answer(StatusCode::NOT_FOUND, ""),
                },
            };
        }
        match item {
            "instance/id" => text(&g.id),
            "instance/zone" => text(&format!(
                "projects/{}/zones/{}",
                g.numeric_project_id, g.zone
            )),
            "instance/machine-type" => text(&format!(
                "projects/{}/machineTypes/{}",
                g.numeric_project_id, g.machine_type
            )),
            "instance/hostname" => text(&g.hostname),
            "instance/network-interfaces/0/ip" => text(&g.ip),
            "instance/network-interfaces/0/mac" => text(&g.mac),
            "project/project-id" => text(&g.project_id),
            "project/numeric-project-id" => text(&g.numeric_project_id),
            _ => answer(StatusCode::NOT_FOUND, ""),
        }
    }
}
