//! Delivering a notice (`bootstage.notify`, else the image's `/etc/bootstage/notify.json`):
//! its JSON, the webhook POST and the command, and the notices of the instance's later
//! life (`drain`, `rebalance`, `maintenance`, and the drain's failure) that the lifecycle
//! watcher sends. `notice` composes the boot's notices and tells the orchestrator; this
//! part knows nothing of the orchestrator, so the watcher can send notices without a
//! circle through `notice`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde::Serialize;
use serde_json::Value;

use crate::base::child;
use crate::base::retry::{self, Deadline, RetryHint};
use crate::settings::SettingsError;
use crate::settings::notify::Config;
use crate::stage::error::{Error, Result};
use crate::stage::error::{ExitCode, ExitStatus};
use crate::stage::query;
use crate::state::StateDir;
use crate::state::status::{self, Record};

/// The image's notice settings, used where user-data has no `bootstage.notify`.
pub const DEFAULT_CONFIG: &str = "/etc/bootstage/notify.json";

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
    /// What a notice of the instance's later life is about, under its event's name:
    /// `"drain": {"reason", "deadline", …}`, `"rebalance": {…}`, `"maintenance": {…}`.
    #[serde(flatten)]
    pub about: serde_json::Map<String, Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum NoticeError {
    #[error(transparent)]
    Config(SettingsError),
    #[error("the notice was not delivered: {0}")]
    Undelivered(String),
}

impl Notice {
    /// A notice of `event` about this instance now: its facts, the stages' records.
    pub fn new(state: &StateDir, event: &'static str) -> Notice {
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
        Notice {
            event,
            time: status::timestamp(SystemTime::now()),
            hostname: read_trimmed("/proc/sys/kernel/hostname"),
            boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
            unit: None,
            stage: None,
            error: None,
            exit_code: None,
            instance,
            timings: status::timings(state),
            lifecycle: None,
            about: serde_json::Map::new(),
        }
    }
}

/// A notice of the instance's later life, sent by the lifecycle watcher: `event` (`drain`,
/// `rebalance`, `maintenance`) with `about` under the event's name; or, with `error`, the
/// failure notice of `stage` (`"stage": "drain"`) with `about` beside it. Every one is
/// sent (no `ready`-like switch: each is rare and worth hearing of); the record rides along.
pub async fn life(
    state: &StateDir,
    fallback: &Path,
    event: &'static str,
    about: Value,
    failed: Option<(&'static str, String)>,
) -> Result<()> {
    let Some(config) = config(state, fallback)? else {
        tracing::debug!("no bootstage.notify: no {event} notice");
        return Ok(());
    };
    let mut notice = match failed {
        Some((stage, error)) => {
            let mut notice = Notice::new(state, "failure");
            notice.stage = Some(stage);
            notice.error = Some(error);
            notice
        }
        None => Notice::new(state, event),
    };
    notice.about.insert(event.to_string(), about);
    notice.lifecycle = crate::state::lifecycle::read(state).ok().flatten();
    send(&config, &notice).await
}

/// Sends `notice` where `config` says: the webhook and the command at once.
pub async fn send(config: &Config, notice: &Notice) -> Result<()> {
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
pub fn config(state: &StateDir, fallback: &Path) -> Result<Option<Config>> {
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
    let client = crate::base::http::client(REQUEST_TIMEOUT)?;
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
        .map_err(|e| {
            PostError::Transient(format!("{e}: {}", crate::base::http::source_chain(&e)))
        })?;
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
