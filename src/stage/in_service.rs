//! The `in-service` stage: the moment the instance goes into service, after the boot's
//! chain, and the only thing that lets an app start on an instance of a warm pool.
//!
//! An instance launched into an auto scaling group's warm pool boots with IMDS's
//! `autoscaling/target-lifecycle-state` at `Warmed:Stopped`, `Warmed:Running` or
//! `Warmed:Hibernated`. The chain runs as at any boot (parameters, sync, per-instance
//! hooks) and the ready unit completes the warm launch action with CONTINUE; then this
//! stage waits, polling the state every `--warm-poll` (2 s; AWS's examples poll every 5 s),
//! bounded by nothing but SIGTERM (the group stops the instance, or leaves it running,
//! for as long as it likes), and says so in `STATUS=`. No app ordered after
//! `bootstage-in-service.target`, and no `bootstage launch`, starts meanwhile.
//!
//! When the state becomes `InService` (a later boot of the same disk begins there; a
//! `Warmed:Running` instance sees it change; a hibernated one sees it on resume):
//! - if the instance waited in the pool this boot, what may have changed while it slept
//!   is read again: the metadata stage runs again (secrets are resolved again: they may
//!   have rotated), every configured sync runs once (an unchanged bundle is one 304);
//! - the hooks of `per-start.d/` run (on every start into service, boot or not), with
//!   `BOOTSTAGE_START` = `boot` or `warm-pool`;
//! - if it waited, the action of leaving the pool (`Pending:Wait`) is completed with
//!   CONTINUE (`lifecycle::into_service`), unless the app sends it (`complete_on: app`);
//! - `in-service.json` is written, and READY sent.
//!
//! A failure there fails the unit, whose `OnFailure=` sends the failure notice and then
//! abandons or holds the instance, as at a boot. Off a group (no state: 404, or no IMDS
//! at all) the instance is in service at once.
//!
//! `Terminated` and `Warmed:Terminated` (the group removes the instance from the pool)
//! start nothing: the stage keeps waiting until it is stopped, and the lifecycle watcher
//! drains. Exactly once: `in-service.json` is checked under a lock of its own, so the
//! unit, `launch` and the resume unit never run the steps twice in one boot.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::base::notify::Notifier;
use crate::base::retry::Deadline;
use crate::base::stop::Stop;
use crate::imds::{self, Target, facts::Facts, target};
use crate::stage::error::{Error, Result};
use crate::stage::hooks::{self, HookDirs, Kind};
use crate::stage::lifecycle;
use crate::stage::metadata;
use crate::stage::s3sync;
use crate::state::StateDir;
use crate::state::atomic;
use crate::state::status;

/// How often the target lifecycle state is read while in the warm pool: AWS's examples
/// poll every 5 s; 2 s keeps the app's start within a few seconds of the switch, at one
/// request per poll while no app runs.
pub const DEFAULT_POLL: &str = "2s";
/// The longest wait for another run of the steps (the unit and `launch` at once): longer
/// than the steps' own bounds (metadata 90 s, a sync 5 min, hooks 10 min), so a second
/// run never gives up (and fails its unit) while the first is still at work.
const LOCK_WAIT: Duration = Duration::from_secs(20 * 60);

#[derive(Debug, Clone)]
pub struct Settings {
    pub metadata: metadata::Settings,
    pub hooks: HookDirs,
    pub lifecycle: lifecycle::Settings,
    /// How often the target lifecycle state is read while waiting.
    pub poll: Duration,
    /// Look once: out of service now, return at once (the resume unit).
    pub once: bool,
}

/// `in-service.json`: where this boot stands with respect to service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// `waiting` (in the warm pool, or leaving) or `in-service`.
    pub state: String,
    /// The target lifecycle state last seen (`None` outside a group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The warm pool state this boot waited in, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm: Option<String>,
    pub since: String,
}

/// The record of this boot, if the stage got as far as writing one.
pub fn read(state: &StateDir) -> Option<Record> {
    let text = std::fs::read(state.in_service_json()).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Whether the instance is in service this boot (the steps are done).
pub fn done(state: &StateDir) -> bool {
    read(state).is_some_and(|r| r.state == "in-service")
}

fn write(state: &StateDir, record: &Record) -> Result<()> {
    let text = serde_json::to_vec_pretty(record).expect("records serialize");
    atomic::write_file(&state.in_service_json(), &text)
        .map_err(|(path, source)| Error::Write { path, source })
}

fn now() -> String {
    status::timestamp(SystemTime::now())
}

/// The stage as its unit runs it: the metadata stage first when its outputs are missing
/// (run by hand), then the wait and the steps. Returns the READY summary, or `None` when
/// stopped before the instance went into service.
pub async fn run(state: &StateDir, args: &Settings, notifier: Notifier) -> Result<Option<String>> {
    metadata::ensure(state, &args.metadata, false, notifier).await?;
    if let Some(record) = read(state).filter(|r| r.state == "in-service") {
        return Ok(Some(format!("in service since {}", record.since)));
    }
    let mut stop = Stop::install().map_err(|source| Error::Write {
        path: "SIGTERM handler".into(),
        source,
    })?;
    let Some(warm) = wait(state, args, notifier, &mut stop).await? else {
        return Ok(None);
    };
    // A stop while going into service ends it at once (exit 0, no app): a hook in
    // progress is killed, and nothing is signalled for a stop someone asked for.
    tokio::select! {
        started = start(state, args, warm, notifier) => started.map(Some),
        _ = stop.requested() => {
            tracing::info!("stopped while going into service: the app does not start");
            Ok(None)
        }
    }
}

/// For `launch`: returns once the instance is in service this boot, running the steps
/// in-process if nobody has; `false` when stopped (SIGTERM) before that.
pub async fn ensure(state: &StateDir, args: &Settings, notifier: Notifier) -> Result<bool> {
    if done(state) {
        return Ok(true);
    }
    Ok(run(state, args, notifier).await?.is_some())
}

/// Waits while the target state keeps the instance out of service. Returns the warm
/// pool state the boot waited in (`Some(None)`: it did not), or `None` on SIGTERM.
async fn wait(
    state: &StateDir,
    args: &Settings,
    notifier: Notifier,
    stop: &mut Stop,
) -> Result<Option<Option<String>>> {
    let at_boot = Facts::of(state).and_then(|f| f.target_lifecycle_state);
    // A warm pool state at boot, or one seen earlier this boot by another run.
    let mut warm = match (target(at_boot.as_deref()), read(state)) {
        (Target::Warm(s), _) => Some(s),
        (_, Some(r)) => r.warm,
        _ => None,
    };
    // In service at boot (or in no group): the metadata stage read the state moments
    // ago, and nothing in a group moves an instance from service back to the pool.
    if warm.is_none() && target(at_boot.as_deref()) == Target::Service {
        return Ok(Some(None));
    }
    // Off-cloud (a user-data file) there is no IMDS to ask: the facts are all there is.
    let client = match &args.metadata.user_data_file {
        Some(_) => None,
        None => Some(client(&args.metadata)?),
    };
    let mut current = at_boot;
    let mut said = None;
    let mut unread = None;
    loop {
        if let Some(client) = &client {
            match client.text(imds::TARGET_LIFECYCLE_STATE).await {
                Ok(state) => {
                    current = state;
                    unread = None;
                }
                // Said once per kind of failure, not at every poll of a wait of days.
                Err(e) => {
                    let why = e.to_string();
                    if unread.as_ref() != Some(&why) {
                        tracing::warn!(
                            "cannot read the target lifecycle state ({why}); going by the last seen"
                        );
                        unread = Some(why);
                    }
                }
            }
        }
        let why = match target(current.as_deref()) {
            Target::Service => return Ok(Some(warm)),
            Target::Warm(s) => {
                warm = Some(s.clone());
                format!(
                    "in the warm pool ({s}): the app starts when the instance goes into service"
                )
            }
            Target::Leaving(s) => {
                format!("leaving the group ({s}): the app does not start")
            }
        };
        if said.as_ref() != Some(&why) {
            tracing::info!("{why}");
            notifier.status(&why);
            let record = Record {
                state: "waiting".into(),
                target: current.clone(),
                warm: warm.clone(),
                since: now(),
            };
            // A report for `status` and the steps' "did it wait" (also kept in memory
            // here): one that cannot be written must not fail a waiting instance.
            if let Err(e) = write(state, &record) {
                tracing::warn!("{e}");
            }
            said = Some(why);
        }
        if args.once {
            tracing::info!("not in service yet: the waiting unit goes on");
            return Ok(None);
        }
        if client.is_none() {
            // Off-cloud nothing will change what the facts say: wait for the stop.
            tracing::info!("waiting until stopped");
            stop.requested().await;
            return Ok(None);
        }
        tokio::select! {
            _ = tokio::time::sleep(args.poll) => {}
            _ = stop.requested() => {
                tracing::info!("stopped before the instance went into service");
                return Ok(None);
            }
        }
    }
}

fn client(args: &metadata::Settings) -> Result<imds::Client> {
    let endpoint = imds::resolve_endpoint(args.imds_endpoint.as_deref(), |v| std::env::var(v).ok())
        .map_err(Error::Usage)?;
    Ok(imds::Client::new(imds::Options {
        endpoint,
        v2_only: args.imds_v2_only,
        request_timeout: args.request_timeout,
        // A poller lives as long as the wait, which only SIGTERM ends; each request is
        // bounded by the request timeout.
        deadline: Deadline::after(Duration::from_secs(100 * 365 * 24 * 3600)),
    })?)
}

/// The steps of going into service, once per boot (under a lock of their own).
async fn start(
    state: &StateDir,
    args: &Settings,
    warm: Option<String>,
    notifier: Notifier,
) -> Result<String> {
    // The resume unit looks once: if another run is at work, that run finishes the job.
    let wait = if args.once { Duration::ZERO } else { LOCK_WAIT };
    let _lock = match state
        .lock_named(".in-service.lock", Deadline::after(wait))
        .await
    {
        Ok(lock) => lock,
        Err(_) if args.once => {
            return Ok("another run is taking the instance into service".into());
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(record) = read(state).filter(|r| r.state == "in-service") {
        return Ok(format!("in service since {}", record.since));
    }
    if let Some(pool) = &warm {
        let why = format!("going into service from the warm pool ({pool}): refreshing");
        tracing::info!("{why}");
        notifier.status(&why);
        lifecycle::entering_service(state)?;
        watch_again(state).await;
        metadata::run(state, &args.metadata, notifier).await?;
        s3sync::sync_missing(state, true, notifier).await?;
    }
    let reason = match warm {
        Some(_) => "warm-pool",
        None => "boot",
    };
    let limit = format!(
        "{} (--hook-timeout, all per-start hooks together)",
        humantime::format_duration(args.hooks.hook_timeout)
    );
    let (ran, _) = hooks::run_kinds(
        state,
        &args.hooks,
        &[Kind::PerStart],
        &[("BOOTSTAGE_START".into(), reason.into())],
        Deadline::after(args.hooks.hook_timeout),
        &limit,
        notifier,
    )
    .await?;
    if warm.is_some()
        && let Err(e) = lifecycle::into_service(state, &args.lifecycle).await
    {
        // As at a boot: a signal that cannot be delivered is recorded (status shows it)
        // and never keeps the app down; the group's heartbeat timeout is the backstop.
        tracing::error!("the group was not told the instance is in service: {e}");
    }
    let since = now();
    write(
        state,
        &Record {
            state: "in-service".into(),
            target: Some("InService".into()).filter(|_| warm.is_some()),
            warm: warm.clone(),
            since: since.clone(),
        },
    )?;
    Ok(match warm {
        Some(pool) => {
            format!("in service (from the warm pool, {pool}): {ran} per-start hook(s) ran")
        }
        None => format!("in service: {ran} per-start hook(s) ran"),
    })
}

/// The lifecycle watcher heartbeats, holds and retries one launch action, and was done
/// with the pool's: on the boot's own state dir under systemd, it is (re)started for the
/// action of leaving the pool. Best effort: the group's heartbeat timeout is the backstop.
async fn watch_again(state: &StateDir) {
    if state.root() != std::path::Path::new(crate::state::DEFAULT_DIR)
        || std::env::var_os("INVOCATION_ID").is_none()
    {
        return;
    }
    let mut command = tokio::process::Command::new("/usr/bin/systemctl");
    command
        .env_clear()
        .args(["--no-block", "restart", WATCHER_UNIT]);
    match crate::base::child::run_bounded(command, Duration::from_secs(10)).await {
        Ok(status) if status.success() => {
            tracing::info!("{WATCHER_UNIT} restarted for the action of leaving the pool")
        }
        Ok(status) => tracing::warn!(
            "systemctl restart {WATCHER_UNIT}: {}",
            crate::base::child::describe(status)
        ),
        Err(e) => tracing::warn!("systemctl restart {WATCHER_UNIT}: {e}"),
    }
}

/// The lifecycle watcher's unit.
const WATCHER_UNIT: &str = "bootstage-lifecycle.service";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_target_lifecycle_state_means_for_the_app() {
        for (state, expected) in [
            (None, Target::Service),
            (Some("InService"), Target::Service),
            (Some("Standby"), Target::Service),
            (Some("Detached"), Target::Service),
            (Some("SomethingNew"), Target::Service),
            (
                Some("Warmed:Stopped"),
                Target::Warm("Warmed:Stopped".into()),
            ),
            (
                Some("Warmed:Running"),
                Target::Warm("Warmed:Running".into()),
            ),
            (
                Some("Warmed:Hibernated"),
                Target::Warm("Warmed:Hibernated".into()),
            ),
            (Some("Terminated"), Target::Leaving("Terminated".into())),
            (
                Some("Warmed:Terminated"),
                Target::Leaving("Warmed:Terminated".into()),
            ),
        ] {
            assert_eq!(target(state), expected, "{state:?}");
        }
    }
}
