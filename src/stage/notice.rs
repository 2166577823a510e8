//! `bootstage notify failure|ready`: tell someone how a boot went.
//!
//! `bootstage-failure@.service` runs `notify failure --unit %i` when a stage (or an app that
//! names it in `OnFailure=`) fails; `bootstage-ready.service` runs `notify ready` once
//! `bootstage.target` is reached. The notice is one JSON object:
//! `{"event", "time", "hostname", "boot_id", "unit", "stage", "error", "exit_code",
//! "instance": <instance.json or null>, "timings": [<status records>]}`.
//!
//! Where it goes comes from the parameters' `bootstage.notify`:
//! `{"url": "https://…", "headers": {…}, "command": "…", "ready": true, "timeout": "30s"}`,
//! else from `/etc/bootstage/notify.json` (baked into the image, so a boot whose metadata
//! stage failed, and so has no parameters, is still heard of). `url` gets the notice as an
//! HTTP POST (any 2xx is delivered; 429, 5xx and network errors are retried with backoff
//! until `timeout`, default 30 s, at most 60 s; other 4xx are final). `command` runs with `/bin/sh -c`,
//! the notice on its stdin, at the same time as the POST, each with the whole timeout. The ready notice is sent only
//! when `ready` is true. Header values are never logged. Delivery failure is logged and
//! exits 75; it never blocks the boot: both units run beside the chain, not in it.
//! A stage that never ran (systemd fails it, and triggers its `OnFailure=`, when an
//! earlier stage failed) sends no notice of its own: one root failure, one notice.
//! The orchestrator is told too (`stage::lifecycle`): CONTINUE and SUCCESS beside the
//! ready notice, ABANDON and FAILURE (or a hold) after a failure notice; the failure
//! notice carries the hold, if one was decided.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde_json::Value;

use crate::base::child;
use crate::base::retry::{self, Deadline, RetryHint};
use crate::settings::SettingsError;
use crate::settings::notify::Config;
use crate::stage::error::{Error, Result};
use crate::stage::error::{ExitCode, ExitStatus};
use crate::stage::{lifecycle, query};
use crate::state::StateDir;
use crate::state::status::{self, Record, Stage, State};

/// `bootstage notify failure|ready [--unit UNIT]`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub event: Event,
    /// The unit the notice is about.
    pub unit: Option<String>,
    /// The image's notice settings, used when the parameters have none.
    pub config: PathBuf,
    /// Where the orchestrator is told, after the notice.
    pub lifecycle: lifecycle::Settings,
}

pub const DEFAULT_CONFIG: &str = "/etc/bootstage/notify.json";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A unit failed (run from OnFailure=).
    Failure,
    /// bootstage.target was reached.
    Ready,
}

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// A longer `timeout` is cut to this, to stay inside the units' TimeoutStartSec=90.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// Each POST, connect included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Serialize)]
pub struct Notice {
    pub event: &'static str,
    pub time: String,
    pub hostname: Option<String>,
    pub boot_id: Option<String>,
    pub unit: Option<String>,
    pub stage: Option<&'static str>,
    pub error: Option<String>,
    pub exit_code: Option<u8>,
    pub instance: Value,
    pub timings: Vec<Record>,
    /// What the orchestrator was told, or a hold: `lifecycle/record.json`, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<crate::state::lifecycle::Record>,
}

#[derive(Debug, thiserror::Error)]
pub enum NoticeError {
    #[error(transparent)]
    Config(SettingsError),
    #[error("the notice was not delivered: {0}")]
    Undelivered(String),
}

pub async fn run(state: &StateDir, args: &Settings) -> Result<()> {
    // systemd triggers OnFailure= also for the later stages whose start failed because an
    // earlier one did; those never ran (no record). The earlier stage's notice is the one
    // that names the cause: one failure, one notice (and one ABANDON). A stage that failed
    // before writing its first record for a reason of its own (a bad setting, a missing
    // binary, a namespace failure at start) is heard of: only an earlier failed stage
    // silences it.
    if args.event == Event::Failure
        && let Some(stage) = args.unit.as_deref().and_then(Stage::of_unit)
        && status::read(state, stage).is_ok_and(|r| r.state == State::Pending)
        && let Some(earlier) = Stage::ALL
            .iter()
            .take_while(|s| **s != stage)
            .find(|s| status::read(state, **s).is_ok_and(|r| r.state == State::Failed))
    {
        tracing::info!(%stage, earlier = %earlier, "the stage never ran because an earlier one failed: no notice of its own");
        return Ok(());
    }
    let mut notice = compose(state, args);
    match args.event {
        // The notice first, then the orchestrator: whoever reads the notice learns why
        // before the group replaces the instance. A hold is decided before the notice, so
        // the notice says how long the instance is kept and how to release it.
        Event::Failure => {
            let reason = notice
                .error
                .clone()
                .unwrap_or_else(|| "a unit failed".into());
            let after = lifecycle::failure(state, &args.lifecycle, &reason).await;
            notice.lifecycle = crate::state::lifecycle::read(state).ok().flatten();
            let sent = send(state, args, &notice).await;
            let told = match after {
                Ok(Some(abandon)) => abandon.send(state).await,
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            };
            both(sent, told)
        }
        // At once: a webhook that is down must not keep the instance out of service.
        Event::Ready => {
            if lifecycle::unwatched(state, &args.lifecycle) {
                tracing::warn!("{}", lifecycle::UNWATCHED);
            }
            let (sent, told) = tokio::join!(
                send(state, args, &notice),
                lifecycle::ready(state, &args.lifecycle, false)
            );
            both(sent, told)
        }
    }
}

/// The first error of two steps that both had to run; the second is logged.
fn both(first: Result<()>, second: Result<()>) -> Result<()> {
    match (first, second) {
        (Err(e), Err(also)) => {
            tracing::error!("{also}");
            Err(e)
        }
        (Err(e), Ok(())) | (Ok(()), Err(e)) => Err(e),
        (Ok(()), Ok(())) => Ok(()),
    }
}

/// Sends the notice where `bootstage.notify` (or the image's file) says.
async fn send(state: &StateDir, args: &Settings, notice: &Notice) -> Result<()> {
    let Some(config) = config(state, &args.config)? else {
        tracing::info!(
            "no bootstage.notify and no {}: nothing to send",
            args.config.display()
        );
        return Ok(());
    };
    if args.event == Event::Ready && !config.ready {
        tracing::info!("bootstage.notify.ready is off: no ready notice");
        return Ok(());
    }
    let body = serde_json::to_vec(notice).expect("notices serialize");
    let deadline = Deadline::after(config.timeout.unwrap_or(DEFAULT_TIMEOUT).min(MAX_TIMEOUT));
    // The webhook and the command at once, each with the whole budget: a webhook that is
    // down must not leave the command (often the one that still works) no time.
    let posting = async {
        let url = config.url.as_ref()?;
        Some(post(url, &config.headers, &body, deadline).await)
    };
    let running = async {
        let command = config.command.as_ref()?;
        Some(run_command(command, notice, &body, deadline).await)
    };
    let (posted, ran) = tokio::join!(posting, running);
    let mut failures = Vec::new();
    match posted {
        Some(Ok(status)) => tracing::info!(event = notice.event, status, "notice delivered"),
        Some(Err(e)) => failures.push(format!("POST: {e}")),
        None => {}
    }
    if let Some(Err(e)) = ran {
        failures.push(format!("command: {e}"));
    }
    match failures.is_empty() {
        true => Ok(()),
        false => Err(NoticeError::Undelivered(failures.join("; ")).into()),
    }
}

/// The parameters' `bootstage.notify` if they have one, else the image's file, else none.
fn config(state: &StateDir, fallback: &Path) -> Result<Option<Config>> {
    let Some((value, origin)) = query::setting(state, "notify", fallback, |why| {
        NoticeError::Config(SettingsError(why)).into()
    })?
    else {
        return Ok(None);
    };
    Ok(Some(
        Config::from_value(&value, &origin).map_err(NoticeError::Config)?,
    ))
}

fn compose(state: &StateDir, args: &Settings) -> Notice {
    let stage = args.unit.as_deref().and_then(Stage::of_unit);
    let record = stage.and_then(|s| status::read(state, s).ok());
    let instance = std::fs::read(state.instance_json())
        .ok()
        .and_then(|text| serde_json::from_slice(&text).ok())
        .unwrap_or(Value::Null);
    let read_trimmed = |path: &str| {
        std::fs::read_to_string(path)
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let (event, error) = match args.event {
        Event::Failure => (
            "failure",
            record.as_ref().and_then(|r| r.error.clone()).or_else(|| {
                args.unit.as_ref().map(|u| match stage {
                    Some(_) => format!(
                        "{u} failed before it wrote a status record (a bad setting, a missing binary, or a failure at start); see journalctl -u {u}"
                    ),
                    None => format!("{u} failed; see journalctl -u {u}"),
                })
            }),
        ),
        Event::Ready => ("ready", None),
    };
    Notice {
        event,
        time: status::timestamp(SystemTime::now()),
        hostname: read_trimmed("/proc/sys/kernel/hostname"),
        boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
        unit: args.unit.clone(),
        stage: stage.map(Stage::name),
        error,
        exit_code: record.and_then(|r| r.exit_code),
        instance,
        timings: status::timings(state),
        lifecycle: None,
    }
}

#[derive(Debug)]
enum PostError {
    Transient(String),
    Final(String),
}

impl std::fmt::Display for PostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PostError::Transient(why) | PostError::Final(why) => f.write_str(why),
        }
    }
}

impl RetryHint for PostError {
    fn retry_after(&self) -> Option<Duration> {
        match self {
            PostError::Transient(_) => Some(Duration::ZERO),
            PostError::Final(_) => None,
        }
    }
}

/// POSTs the notice, retried under [`retry::NOTICE`] until the deadline. Returns the status.
async fn post(
    url: &str,
    headers: &BTreeMap<String, String>,
    body: &[u8],
    deadline: Deadline,
) -> std::result::Result<u16, String> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(REQUEST_TIMEOUT));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| format!("no CA certificates for https: {e}"))?
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    let body = Bytes::copy_from_slice(body);
    let attempt = || async {
        let mut request = http::Request::post(url)
            .header("content-type", "application/json")
            .header(
                "user-agent",
                concat!("bootstage/", env!("CARGO_PKG_VERSION")),
            );
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = request
            .body(Full::new(body.clone()))
            .map_err(|e| PostError::Final(format!("bad url or header: {e}")))?;
        let limit = REQUEST_TIMEOUT.min(deadline.remaining());
        let response = tokio::time::timeout(limit, async {
            let response = client.request(request).await?;
            let status = response.status();
            // Read the (small) answer so the connection ends cleanly; its content is unused.
            let _ = response.into_body().collect().await;
            Ok::<_, hyper_util::client::legacy::Error>(status)
        })
        .await
        .map_err(|_| PostError::Transient("no answer within 10 s".into()))?
        .map_err(|e| PostError::Transient(format!("{e}: {}", source_chain(&e))))?;
        match response.as_u16() {
            200..=299 => Ok(response.as_u16()),
            429 | 500..=599 => Err(PostError::Transient(format!("HTTP {response}"))),
            _ => Err(PostError::Final(format!("HTTP {response}"))),
        }
    };
    retry::until_deadline(
        retry::NOTICE,
        deadline,
        |e, attempt, sleep| {
            tracing::warn!(attempt, error = %e, "notice not delivered; retrying in {sleep:?}")
        },
        attempt,
    )
    .await
    .map_err(|e| e.to_string())
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut parts = Vec::new();
    let mut source = e.source();
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    parts.join(": ")
}

async fn run_command(
    command: &str,
    notice: &Notice,
    body: &[u8],
    deadline: Deadline,
) -> std::result::Result<(), String> {
    // The notice goes in through a file, not a pipe: a command that never reads its stdin
    // must not be able to stall us on a full pipe.
    let mut file = tempfile::tempfile().map_err(|e| format!("cannot stage the notice: {e}"))?;
    std::io::Write::write_all(&mut file, body).map_err(|e| e.to_string())?;
    std::io::Seek::rewind(&mut file).map_err(|e| e.to_string())?;
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(command)
        .stdin(file)
        .env("BOOTSTAGE_EVENT", notice.event)
        .env("BOOTSTAGE_UNIT", notice.unit.as_deref().unwrap_or(""));
    match child::run_bounded(cmd, deadline.remaining()).await {
        Ok(status) if status.success() => {
            tracing::info!(event = notice.event, "notice command done");
            Ok(())
        }
        Ok(status) => Err(child::describe(status)),
        Err(e) => Err(e.to_string()),
    }
}

impl From<NoticeError> for Error {
    fn from(e: NoticeError) -> Error {
        Error::Stage(Box::new(e))
    }
}

impl ExitStatus for NoticeError {
    fn exit_code(&self) -> ExitCode {
        match self {
            NoticeError::Config(_) => ExitCode::BadUserData,
            NoticeError::Undelivered(_) => ExitCode::TempFail,
        }
    }
}
