//! An emulator of the EC2 instance metadata service (IMDS) over real HTTP on loopback,
//! following AWS's documented behaviour, and scriptable per test.
//!
//! What it does as AWS documents it: IMDSv2 tokens (`PUT /latest/api/token` with a TTL
//! header of 1–21600 s, 400 without one, 403 with `X-Forwarded-For`; expired or unknown
//! tokens get 401), optional IMDSv1 (or 401 without a token when `v2_only`), user-data
//! (200 octet-stream or 404), meta-data items, the identity document, and instance tags
//! (404 unless enabled).
//!
//! What a test can script: user-data that appears after a delay or on demand; the token
//! endpoint forbidden (403), absent (404/405) or hanging; the first N requests hanging or
//! answered 503 with a Retry-After; tokens expired on demand; the listener bound late
//! (connection refused, then up). Every IMDS request is recorded with its time and answer.
//!
//! An instance's life after boot, as IMDS shows it: `autoscaling/target-lifecycle-state`
//! (404 until the group moves the instance, then `InService`, `Warmed:Stopped`, …, as
//! plain text), `spot/instance-action` (404 until an interruption is scheduled, then
//! `{"action": "terminate", "time": "…"}`), `events/recommendations/rebalance` (404, then
//! `{"noticeTime": "…"}`) and `events/maintenance/scheduled` (`[]` when none is
//! scheduled, else a JSON array of events). Each is served verbatim from its `Config`
//! field, and listed in its directory (`/latest/meta-data/` lists `autoscaling/` and
//! `spot/` while they are set; `events/` always, as `events/maintenance/scheduled` always
//! answers). A scenario's `timeline` changes them at set times after the start; a test
//! changes them at any moment (`Emulator::set_meta_data`, or `PUT /_emulator/meta-data/…`).
//! Every change is logged with its wall clock time and its time since the start
//! (`Emulator::changes`, `GET /_emulator/changes`), so a benchmark can measure from a state
//! change to what a client did about it.
//!
//! Compute Engine's metadata server, with `flavor: gcp` (`--flavor gcp`), as Google
//! documents it: every request needs `Metadata-Flavor: Google` (403 without it, or with
//! `X-Forwarded-For`), every answer carries it (unless `omit_flavor_header`, a server that
//! is not Google's); below `/computeMetadata/v1/`: `instance/attributes/NAME` (the
//! user-data at `gcp.user_data_attribute`, `bootstage` by default, on the same schedule
//! as EC2's, and `gcp.attributes`; `instance/attributes/` lists them), `instance/id`,
//! `instance/zone` (`projects/NUMBER/zones/ZONE`), `instance/machine-type`
//! (`projects/NUMBER/machineTypes/TYPE`), `instance/hostname`,
//! `instance/network-interfaces/0/ip` and `…/mac`, `project/project-id`,
//! `project/numeric-project-id`, and `instance/preempted` and `instance/maintenance-event`
//! long-polled with `?wait_for_change=true` and ETags (`gcp.rs` says how, and how a test
//! changes them: `Emulator::set_gcp`, `PUT /_emulator/gcp/KEY`); 404 for anything else.
//! EC2's paths answer 404 there.
//! `hang_first`, `unavailable_first` and `gone_first` (410, as Azure's services answer
//! early in a boot) apply to every flavor.
//!
//! Azure's Instance Metadata Service, with `flavor: azure` (`--flavor azure`), as
//! Microsoft documents it: every request needs `Metadata: true` and no `X-Forwarded-For`
//! (400 otherwise), and an `api-version` (400 without); `/metadata/instance` serves the
//! instance document as JSON (`azure`: `compute` with `vmId`, `location`, `zone`,
//! `vmSize`, `subscriptionId`, `resourceGroupName`, `name`, `osProfile.computerName`,
//! `tagsList`, `userData`; `network.interface`), any node below it by path, a leaf only
//! with `format=text`: `compute/userData` is the user-data base64-encoded (empty while
//! there is none). `azure.answer_html` answers HTML instead, as a server that is not
//! Azure's; `azure.instance_missing_first` answers the document 404 at first, as Azure
//! may while the VM is provisioned. Azure's wireserver is served on the same port: `GET /machine/?comp=goalstate`
//! (the goal state, XML) and `POST /machine/?comp=health` (200; its body is in the
//! request's `Record`), both 400 without `x-ms-version: 2012-11-30`. Scheduled events
//! (`/metadata/scheduledevents`, approved with `StartRequests`) as `azure.rs` says, with
//! how a test adds and removes them (`Emulator::add_scheduled_event`,
//! `/_emulator/azure/…`).
//!
//! OpenStack Nova's metadata service, with `flavor: openstack` (`--flavor openstack`):
//! `/openstack/latest/meta_data.json` (`openstack`: `uuid`, `name`, `hostname`,
//! `availability_zone`, `project_id`, `meta`) and `/openstack/latest/user_data` (404
//! while there is none); no header asked. `OpenStackInstance::write_config_drive` writes
//! the same files as a config drive.
//!
//! Each flavor lives in its own module (`aws`, `gcp`); this one holds the scenario, the
//! server, the scripted failures common to all and the control endpoints.
//!
//! Control from another process: `PUT /_emulator/user-data` (body), `DELETE` it,
//! `POST /_emulator/expire-tokens`, `GET /_emulator/requests` (JSON) and `DELETE` them,
//! `PUT /_emulator/meta-data/PATH` (body: the new value) and `DELETE` it (404 again, `[]`
//! for `events/maintenance/scheduled`) for the four paths above (`PATH` as below
//! `/latest/meta-data/`), `GET /_emulator/changes` (JSON). These are neither recorded nor
//! counted.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

mod aws;
mod azure;
mod gcp;
mod openstack;

pub use aws::{Instance, TokenMode};
pub use azure::{AzureInstance, ScheduledEvent, rfc1123};
pub use gcp::GcpInstance;
pub use openstack::OpenStackInstance;

/// Which cloud's metadata service the emulator is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Flavor {
    /// EC2's IMDS.
    #[default]
    Aws,
    /// Compute Engine's metadata server.
    Gcp,
    /// Azure's Instance Metadata Service.
    Azure,
    /// OpenStack Nova's metadata service.
    #[serde(rename = "openstack")]
    OpenStack,
}

/// User-data in a config file: a string, kept as its bytes.
fn text_bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.map(String::into_bytes))
}

/// A scenario. Loaded from JSON by the binary (`--config`), built in code by tests.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The raw user-data, bytes as EC2 serves them (gzip included); `None` answers 404.
    /// A config file gives it as a string.
    #[serde(deserialize_with = "text_bytes")]
    pub user_data: Option<Vec<u8>>,
    /// Answer 404 for user-data until this long after start.
    #[serde(with = "humantime_serde_opt")]
    pub user_data_after: Option<Duration>,
    pub token: TokenMode,
    /// Require a token on every GET (HttpTokens=required).
    pub v2_only: bool,
    /// Cap on token lifetimes, to expire tokens mid-run.
    #[serde(with = "humantime_serde_opt")]
    pub max_token_ttl: Option<Duration>,
    /// The first N requests never get an answer.
    pub hang_first: u64,
    /// The next N requests get 503.
    pub unavailable_first: u64,
    /// The next N requests get 410 Gone: Azure's IMDS and wireserver early in a boot
    /// ("retry after some time", as Microsoft documents it).
    pub gone_first: u64,
    /// The first N token PUTs never get an answer (a slow or lost one, or the hop limit).
    pub hang_token_first: u64,
    /// Retry-After (seconds) on those 503s.
    pub retry_after: Option<u64>,
    /// Instance tags in metadata; `None` answers 404 as when the instance does not allow it.
    pub tags: Option<BTreeMap<String, String>>,
    /// `autoscaling/target-lifecycle-state` (an instance in an auto scaling group);
    /// `None` answers 404 as outside a group.
    pub target_lifecycle_state: Option<String>,
    /// `spot/instance-action`, served as is (`{"action": "terminate", "time":
    /// "2017-09-18T08:22:00Z"}`); `None` answers 404 as before an interruption is scheduled.
    pub spot_instance_action: Option<String>,
    /// `events/recommendations/rebalance`, served as is (`{"noticeTime":
    /// "2020-10-27T08:22:00Z"}`); `None` answers 404.
    pub rebalance: Option<String>,
    /// `events/maintenance/scheduled`, served as is (a JSON array of events); `None`
    /// answers `[]`, as IMDS does when none is scheduled.
    pub maintenance_scheduled: Option<String>,
    /// Changes to those four that apply on their own, each once its `after` has passed
    /// since the start. Read at the start: changing it later (`update`) does nothing.
    pub timeline: Vec<Change>,
    pub instance: Instance,
    pub flavor: Flavor,
    /// With `flavor: gcp`: the instance.
    pub gcp: GcpInstance,
    /// With `flavor: gcp`: answer without `Metadata-Flavor: Google`, as a server that is
    /// not Google's would.
    pub omit_flavor_header: bool,
    /// With `flavor: azure`: the VM.
    pub azure: AzureInstance,
    /// With `flavor: openstack`: the server.
    pub openstack: OpenStackInstance,
}

/// The meta-data paths (below `/latest/meta-data/`) a timeline, `set_meta_data` and
/// `PUT /_emulator/meta-data/…` can set.
pub const SETTABLE_PATHS: [&str; 4] = [
    "autoscaling/target-lifecycle-state",
    "spot/instance-action",
    "events/recommendations/rebalance",
    "events/maintenance/scheduled",
];

impl Config {
    /// The field behind a settable path.
    fn slot(&mut self, path: &str) -> Option<&mut Option<String>> {
        match path {
            "autoscaling/target-lifecycle-state" => Some(&mut self.target_lifecycle_state),
            "spot/instance-action" => Some(&mut self.spot_instance_action),
            "events/recommendations/rebalance" => Some(&mut self.rebalance),
            "events/maintenance/scheduled" => Some(&mut self.maintenance_scheduled),
            _ => None,
        }
    }

    fn meta_data(&self) -> [Option<String>; 4] {
        [
            self.target_lifecycle_state.clone(),
            self.spot_instance_action.clone(),
            self.rebalance.clone(),
            self.maintenance_scheduled.clone(),
        ]
    }
}

/// `path` as one of `SETTABLE_PATHS`; leading and trailing slashes are ignored.
fn settable(path: &str) -> Option<&'static str> {
    let path = path.trim_matches('/');
    SETTABLE_PATHS.into_iter().find(|p| *p == path)
}

/// One change in a scenario's timeline.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Change {
    /// When, after the emulator started (`"2s"`, `"1m 30s"` in JSON).
    #[serde(with = "humantime_serde_dur")]
    pub after: Duration,
    /// One of `SETTABLE_PATHS`, e.g. `autoscaling/target-lifecycle-state`; any other is an
    /// error at the start.
    pub path: String,
    /// The new value; `None` (or absent) answers 404 again (`[]` for
    /// `events/maintenance/scheduled`).
    #[serde(default)]
    pub value: Option<String>,
}

/// One change to a settable meta-data path, as it applied.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChangeRecord {
    /// As in `SETTABLE_PATHS`.
    pub path: String,
    pub value: Option<String>,
    /// Time since the emulator started (seconds in JSON).
    #[serde(serialize_with = "as_secs_f64")]
    pub at: Duration,
    /// Wall clock: seconds since the Unix epoch.
    pub unix: f64,
    /// `timeline`, `control` (`/_emulator/meta-data/…`) or `api` (`set_meta_data`,
    /// `update`).
    pub by: String,
}

/// One IMDS request as the emulator saw it.
#[derive(Clone, Debug, Serialize)]
pub struct Record {
    pub method: String,
    pub path: String,
    /// `None` when the emulator never answered.
    pub status: Option<u16>,
    pub had_token: bool,
    /// The request carried `Metadata-Flavor: Google`.
    pub had_flavor: bool,
    /// The request carried `Metadata: true` (Azure's).
    pub had_metadata: bool,
    /// The query string, if any (`api-version=…` on Azure).
    pub query: Option<String>,
    /// The request's body, if it had one (as UTF-8, lossily: a wireserver report).
    pub body: Option<String>,
    /// Time since the emulator started.
    #[serde(serialize_with = "as_secs_f64")]
    pub at: Duration,
}

struct Shared {
    config: Mutex<Config>,
    started: Instant,
    user_data_at: Mutex<Option<Duration>>,
    tokens: Mutex<HashMap<String, Instant>>,
    counter: AtomicU64,
    token_puts: AtomicU64,
    log: Mutex<Vec<Record>>,
    /// The config's timeline, in order of `after`.
    timeline: Vec<Change>,
    /// How many of `timeline` have applied.
    applied: Mutex<usize>,
    changes: Mutex<Vec<ChangeRecord>>,
    /// Compute Engine's long polls (`gcp::Live`).
    gcp: gcp::Live,
    /// Azure's scheduled events (`azure::Live`).
    azure: azure::Live,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running emulator; stops when dropped.
pub struct Emulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
    timeline: tokio::task::JoinHandle<()>,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.task.abort();
        self.timeline.abort();
    }
}

enum Reply {
    Answer(StatusCode, Vec<(&'static str, String)>, Vec<u8>),
    Hang,
    /// Answered later (a long poll).
    Wait(std::pin::Pin<Box<dyn Future<Output = Reply> + Send>>),
}

fn answer(status: StatusCode, body: impl Into<Vec<u8>>) -> Reply {
    Reply::Answer(status, Vec::new(), body.into())
}

impl Emulator {
    /// Starts on an ephemeral loopback port.
    pub async fn start(config: Config) -> std::io::Result<Emulator> {
        Self::bind(SocketAddr::from(([127, 0, 0, 1], 0)), config).await
    }

    /// Starts on `addr`, which must be a loopback address.
    pub async fn bind(addr: SocketAddr, config: Config) -> std::io::Result<Emulator> {
        let addr = check_loopback(addr)?;
        check_timeline(&config)?;
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Self::shared(config);
        let task = tokio::spawn(serve(listener, shared.clone()));
        let timeline = tokio::spawn(run_timeline(shared.clone()));
        Ok(Emulator {
            addr,
            shared,
            task,
            timeline,
        })
    }

    /// Reserves a loopback port but accepts connections only after `delay`: until then a
    /// client gets "connection refused".
    pub async fn start_later(config: Config, delay: Duration) -> std::io::Result<Emulator> {
        check_timeline(&config)?;
        let addr = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await?
            .local_addr()?;
        let shared = Self::shared(config);
        let inner = shared.clone();
        let task = tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Ok(listener) = tokio::net::TcpListener::bind(addr).await {
                serve(listener, inner).await;
            }
        });
        let timeline = tokio::spawn(run_timeline(shared.clone()));
        Ok(Emulator {
            addr,
            shared,
            task,
            timeline,
        })
    }

    fn shared(config: Config) -> Arc<Shared> {
        let user_data_at = config
            .user_data
            .as_ref()
            .map(|_| config.user_data_after.unwrap_or_default());
        let mut timeline = config.timeline.clone();
        timeline.sort_by_key(|c| c.after);
        Arc::new(Shared {
            config: Mutex::new(config),
            started: Instant::now(),
            user_data_at: Mutex::new(user_data_at),
            tokens: Mutex::new(HashMap::new()),
            counter: AtomicU64::new(0),
            token_puts: AtomicU64::new(0),
            log: Mutex::new(Vec::new()),
            timeline,
            applied: Mutex::new(0),
            changes: Mutex::new(Vec::new()),
            gcp: gcp::Live::default(),
            azure: azure::Live::default(),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Makes user-data available now (`Some`) or absent (`None`).
    pub fn set_user_data(&self, user_data: Option<&[u8]>) {
        self.shared.set_user_data(user_data.map(<[u8]>::to_vec));
    }

    /// Every token issued so far now answers 401.
    pub fn expire_tokens(&self) {
        lock(&self.shared.tokens).clear();
    }

    /// Changes the scenario while running. Changes to the settable meta-data paths are
    /// logged (`changes`); the timeline is not read again.
    pub fn update(&self, change: impl FnOnce(&mut Config)) {
        self.shared.apply_due();
        let mut config = lock(&self.shared.config);
        let before = config.meta_data();
        change(&mut config);
        let after = config.meta_data();
        for ((path, old), new) in SETTABLE_PATHS.iter().zip(before).zip(after) {
            if old != new {
                self.shared.log_change(path, new, "api");
            }
        }
    }

    /// Sets one of `SETTABLE_PATHS` (below `/latest/meta-data/`, e.g.
    /// `spot/instance-action`) now: `Some` serves the value, `None` answers 404 again (`[]`
    /// for `events/maintenance/scheduled`). Logged in `changes`.
    ///
    /// # Panics
    /// On any other path: a mistake in the test.
    pub fn set_meta_data(&self, path: &str, value: Option<&str>) {
        let Some(path) = settable(path) else {
            panic!("{path:?} is not a settable meta-data path (one of {SETTABLE_PATHS:?})");
        };
        self.shared.apply_due();
        self.shared
            .set_meta_data(path, value.map(str::to_string), "api");
    }

    /// Every change to a settable meta-data path so far (timeline, control and API), in
    /// the order they applied.
    pub fn changes(&self) -> Vec<ChangeRecord> {
        self.shared.apply_due();
        lock(&self.shared.changes).clone()
    }

    /// The IMDS requests so far, in arrival order.
    pub fn requests(&self) -> Vec<Record> {
        lock(&self.shared.log).clone()
    }
}

fn check_loopback(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    if addr.ip().is_loopback() {
        Ok(addr)
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("refusing to listen on {addr}: the emulator serves loopback only"),
        ))
    }
}

/// Every timeline path must be settable.
fn check_timeline(config: &Config) -> std::io::Result<()> {
    match config.timeline.iter().find(|c| settable(&c.path).is_none()) {
        None => Ok(()),
        Some(c) => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "timeline: {:?} is not a settable meta-data path (one of {})",
                c.path,
                SETTABLE_PATHS.join(", ")
            ),
        )),
    }
}

/// Applies each timeline change when it is due. A request that comes first applies it
/// too (`Shared::apply_due`), so no answer is older than the timeline says.
async fn run_timeline(shared: Arc<Shared>) {
    for i in 0..shared.timeline.len() {
        let Some(due) = shared.started.checked_add(shared.timeline[i].after) else {
            return;
        };
        tokio::time::sleep_until(due.into()).await;
        shared.apply_due();
    }
}

async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let app = Router::new().fallback(handle).with_state(shared);
    let _ = axum::serve(listener, app).await;
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    shared.apply_due();
    if let Some(control) = path.strip_prefix("/_emulator/") {
        return shared.control(&method, control, body);
    }
    let n = shared.counter.fetch_add(1, Ordering::SeqCst);
    let reply = match shared.reply(n, &method, &path, uri.query(), &headers, &body) {
        Reply::Wait(later) => later.await,
        reply => reply,
    };
    let status = match &reply {
        Reply::Answer(status, ..) => Some(status.as_u16()),
        Reply::Hang | Reply::Wait(_) => None,
    };
    lock(&shared.log).push(Record {
        method: method.to_string(),
        path,
        status,
        had_token: headers.contains_key(aws::TOKEN),
        had_flavor: gcp::flavored(&headers),
        had_metadata: azure::has_metadata_header(&headers),
        query: uri.query().map(str::to_string),
        body: Some(String::from_utf8_lossy(&body).into_owned()).filter(|b| !b.is_empty()),
        at: shared.started.elapsed(),
    });
    match reply {
        Reply::Answer(status, extra, body) => {
            let mut response = (status, body).into_response();
            for (name, value) in extra {
                if let Ok(value) = HeaderValue::from_str(&value) {
                    response.headers_mut().insert(name, value);
                }
            }
            response
        }
        Reply::Hang | Reply::Wait(_) => std::future::pending().await,
    }
}

impl Shared {
    fn set_user_data(&self, user_data: Option<Vec<u8>>) {
        let at = user_data.as_ref().map(|_| self.started.elapsed());
        lock(&self.config).user_data = user_data;
        *lock(&self.user_data_at) = at;
    }

    /// The user-data as served now: `None` before `user_data_after` or when there is none.
    fn user_data_now(&self, config: &Config) -> Option<Vec<u8>> {
        let at = *lock(&self.user_data_at);
        match (&config.user_data, at) {
            (Some(data), Some(at)) if self.started.elapsed() >= at => Some(data.clone()),
            _ => None,
        }
    }

    /// Applies the timeline's changes that are due and not yet applied.
    fn apply_due(&self) {
        let mut applied = lock(&self.applied);
        let elapsed = self.started.elapsed();
        while let Some(c) = self.timeline.get(*applied).filter(|c| c.after <= elapsed) {
            // Checked at the start: each path is settable.
            if let Some(path) = settable(&c.path) {
                self.set_meta_data(path, c.value.clone(), "timeline");
            }
            *applied += 1;
        }
    }

    fn set_meta_data(&self, path: &'static str, value: Option<String>, by: &str) {
        let mut config = lock(&self.config);
        if let Some(slot) = config.slot(path) {
            *slot = value.clone();
        }
        // Under the config's lock: the log's order is the order the values applied.
        self.log_change(path, value, by);
    }

    fn log_change(&self, path: &str, value: Option<String>, by: &str) {
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        lock(&self.changes).push(ChangeRecord {
            path: path.to_string(),
            value,
            at: self.started.elapsed(),
            unix,
            by: by.to_string(),
        });
    }

    fn control(&self, method: &Method, what: &str, body: Bytes) -> Response {
        if let Some(key) = what.strip_prefix("gcp/") {
            return self.gcp_control(method, key, body);
        }
        if let Some(what) = what.strip_prefix("azure/") {
            return self.azure_control(method, what, body);
        }
        if let Some(path) = what.strip_prefix("meta-data/") {
            let Some(path) = settable(path) else {
                let why = format!(
                    "{path:?} is not a settable meta-data path (one of {})\n",
                    SETTABLE_PATHS.join(", ")
                );
                return (StatusCode::NOT_FOUND, why).into_response();
            };
            match method.as_str() {
                "PUT" => {
                    let value = String::from_utf8_lossy(&body).into_owned();
                    self.set_meta_data(path, Some(value), "control");
                }
                "DELETE" => self.set_meta_data(path, None, "control"),
                _ => return StatusCode::METHOD_NOT_ALLOWED.into_response(),
            }
            return StatusCode::NO_CONTENT.into_response();
        }
        match (method.as_str(), what) {
            ("PUT", "user-data") => self.set_user_data(Some(body.to_vec())),
            ("DELETE", "user-data") => self.set_user_data(None),
            ("POST", "expire-tokens") => lock(&self.tokens).clear(),
            ("DELETE", "requests") => lock(&self.log).clear(),
            ("GET", "requests") => {
                let log = serde_json::to_vec(&*lock(&self.log)).unwrap_or_default();
                return ([(header::CONTENT_TYPE, "application/json")], log).into_response();
            }
            ("GET", "changes") => {
                let log = serde_json::to_vec(&*lock(&self.changes)).unwrap_or_default();
                return ([(header::CONTENT_TYPE, "application/json")], log).into_response();
            }
            _ => return StatusCode::NOT_FOUND.into_response(),
        }
        StatusCode::NO_CONTENT.into_response()
    }

    fn reply(
        self: &Arc<Self>,
        n: u64,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Reply {
        let config = lock(&self.config).clone();
        if n < config.hang_first {
            return Reply::Hang;
        }
        if n < config.hang_first + config.unavailable_first {
            let extra = config
                .retry_after
                .map(|s| vec![("retry-after", s.to_string())])
                .unwrap_or_default();
            return Reply::Answer(StatusCode::SERVICE_UNAVAILABLE, extra, Vec::new());
        }
        if n < config.hang_first + config.unavailable_first + config.gone_first {
            return answer(StatusCode::GONE, "");
        }
        match config.flavor {
            Flavor::Aws => self.aws(&config, method, path, headers),
            Flavor::Gcp => self.gcp(&config, method, path, query, headers),
            Flavor::Azure => self.azure(&config, method, path, query, headers, body),
            Flavor::OpenStack => self.openstack(&config, method, path),
        }
    }
}

fn as_secs_f64<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// A `"2s"`-style duration in JSON scenarios.
mod humantime_serde_dur {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        humantime::parse_duration(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// `"2s"`-style durations in JSON scenarios.
mod humantime_serde_opt {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) => humantime::parse_duration(&s)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }
}
