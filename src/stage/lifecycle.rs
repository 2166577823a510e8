//! Telling the auto scaling group and CloudFormation how the boot went, and holding a
//! failed instance for debugging: `bootstage lifecycle watch` (the heartbeat unit),
//! `bootstage lifecycle complete` (the success signals, for an app that sends them after
//! its own readiness check), `bootstage release` (ends a hold), and the two steps the
//! notices take after they are sent ([`ready`], [`failure`]).
//!
//! Settings: the parameters' `bootstage.lifecycle`, else the image's
//! `/etc/bootstage/lifecycle.json` (so a boot whose metadata stage failed is still
//! abandoned or held), as the notices do. Without either, every step here does nothing.
//!
//! - While the boot runs, the watcher sends `RecordLifecycleActionHeartbeat` every third
//!   of the hook's heartbeat timeout, so a long first sync is never cut off by the group
//!   (`lifecycle/heartbeat.rs`).
//! - On success (`bootstage.target` reached, or the app's `lifecycle complete`):
//!   `CompleteLifecycleAction CONTINUE` and `SignalResource SUCCESS`, at once.
//! - On failure, after the failure notice: `ABANDON` and `SignalResource FAILURE`; or, with
//!   `on_failure: hold`, a hold in `lifecycle/record.json` that the watcher keeps alive with
//!   heartbeats until `bootstage release` or `hold_for` (clamped to the group's limits:
//!   100 heartbeat timeouts, 48 h, counted from the instance's `pendingTime`), then
//!   abandons.
//!
//! A signal that cannot be delivered is logged, kept in `lifecycle/record.json` (shown by
//! `status`) and exits 75; it never blocks the app: none of these runs in the chain.
//!
//! After the launch, the same watcher keeps an eye on the instance's later life when
//! there is something to do about it: the drain on scale-in, a Spot interruption or a
//! retirement, the rebalance and maintenance hooks, and the termination hook's
//! completion (`lifecycle/life.rs` decides, `lifecycle/drain.rs` acts).
//!
//! With `bootstage.report.tags`, the watcher's start tags the instance `booting`, and a
//! drain `draining` (`stage::tags`).
//!
//! On Compute Engine and Azure (`instance.json`'s `source` is `gcp` or `azure`, as the
//! metadata stage wrote it) the watcher goes straight to the instance's later life: Auto
//! Scaling hooks, the group, CloudFormation and the status tags are AWS's, and it asks
//! none of them (said once). On OpenStack (`openstack`) there is nothing to watch: Nova's
//! metadata has no interruption events, so the watcher says so and exits (0) without
//! asking any metadata service (nor AWS).

mod drain;
mod heartbeat;
mod leaving;
mod life;
mod sources;

pub use drain::{DEFAULT_POLL, DEFAULT_SYSTEMCTL, Watch};

use heartbeat::{Launch, keep_launch_alive};

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::aws::Aws;
use crate::base::notify::Notifier;
use crate::base::retry::Deadline;
use crate::base::stop::Stop;
use crate::imds::provider::Provider;
use crate::imds::{self, facts::Facts};
use crate::orchestrator::{
    self, CompleteOn, Config, Delivery, LaunchHook, OnFailure, OrchestratorError,
};
use crate::report::tags::Status;
use crate::stage::error::{Error, ExitCode, ExitStatus, Result};
use crate::stage::identity;
use crate::stage::query;
use crate::stage::tags;
use crate::state::StateDir;
use crate::state::lifecycle::{self, Hold, Record, Signal};
use crate::state::status;

/// Where the image's settings are.
pub const DEFAULT_CONFIG: &str = "/etc/bootstage/lifecycle.json";
/// Each signal's budget, its retries included: inside the units' TimeoutStartSec.
pub const SIGNAL_TIMEOUT: Duration = Duration::from_secs(20);
/// Heartbeats when the hook's timeout cannot be read: a third of AWS's 30 s minimum.
const FALLBACK_HEARTBEAT: Duration = Duration::from_secs(10);
/// How often the watcher looks at `lifecycle/record.json` for a hold, a release or a completion.
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// How long after a stage failed the watcher leaves the failure unit to abandon or hold
/// the instance before it abandons it itself: the failure unit's notice and signals take
/// at most 60 s + 2 × 20 s. A hidden flag (`lifecycle --failure-grace`), for the tests.
pub const DEFAULT_FAILURE_GRACE: &str = "120s";
/// A heartbeat or a final signal that was not delivered is tried again this soon.
const RETRY_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct Settings {
    /// The image's settings, used when the parameters have none.
    pub config: PathBuf,
    /// The watcher's wait for the failure unit ([`DEFAULT_FAILURE_GRACE`]).
    pub failure_grace: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            config: DEFAULT_CONFIG.into(),
            failure_grace: crate::base::duration::parse(DEFAULT_FAILURE_GRACE)
                .expect("a valid default"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("no hold is in progress: nothing to release (bootstage status shows the lifecycle)")]
    NotHeld,
    #[error("the instance's identity is unknown: no instance.json and IMDS did not say ({0})")]
    NoIdentity(String),
}

impl ExitStatus for LifecycleError {
    fn exit_code(&self) -> ExitCode {
        match self {
            LifecycleError::NotHeld => ExitCode::Failed,
            LifecycleError::NoIdentity(_) => ExitCode::TempFail,
        }
    }
}

impl From<LifecycleError> for Error {
    fn from(e: LifecycleError) -> Error {
        Error::Stage(Box::new(e))
    }
}

impl From<OrchestratorError> for Error {
    fn from(e: OrchestratorError) -> Error {
        Error::Stage(Box::new(e))
    }
}

/// The parameters' `bootstage.lifecycle` if they have one, else the image's file, else none.
pub fn config(state: &StateDir, fallback: &Path) -> Result<Option<Config>> {
    let Some((value, origin)) = query::setting(state, "lifecycle", fallback, |why| {
        OrchestratorError::Config(crate::settings::SettingsError(why)).into()
    })?
    else {
        return Ok(None);
    };
    Ok(Some(Config::from_value(&value, &origin)?))
}

/// Everything a signal needs: the shared AWS config, who this instance is, and its hook.
struct Link {
    config: Config,
    aws: Aws,
    instance_id: String,
    hook: Option<LaunchHook>,
    /// IMDS's target lifecycle state at the boot's metadata stage (`None`: 404).
    target: Option<String>,
    /// How long ago the lifecycle action began: since the identity document's
    /// `pendingTime`, else since the kernel's boot (the action starts before either).
    launched: Duration,
}

/// Whose metadata the metadata stage read (`instance.json`'s `source`): the watcher asks
/// that cloud, and nothing of AWS's elsewhere. Off-cloud facts (`flags`): EC2's; none: as
/// the metadata stage chooses without a flag.
pub(crate) fn cloud(state: &StateDir) -> Provider {
    if let Some(facts) = Facts::of(state) {
        return Provider::of_facts(&facts.source).unwrap_or(Provider::Aws);
    }
    // No facts (the metadata stage has not run, or failed): the provider it would have
    // chosen, from BOOTSTAGE_PROVIDER or the DMI, never from the network; else EC2.
    let env = std::env::var("BOOTSTAGE_PROVIDER").ok();
    let root = std::env::var_os("BOOTSTAGE_DMI_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| imds::provider::DMI_ROOT.into());
    imds::provider::choose(None, env.as_deref(), &imds::provider::Dmi::read(&root))
        .map(|(provider, _)| provider)
        .unwrap_or(Provider::Aws)
}

/// The cloud's name in the log, when it is not EC2.
fn elsewhere(state: &StateDir) -> Option<&'static str> {
    match cloud(state) {
        Provider::Aws => None,
        Provider::Gcp => Some("Compute Engine"),
        Provider::Azure => Some("Azure"),
        Provider::OpenStack => Some("OpenStack"),
    }
}

/// Off EC2, the signals of a boot have no one to go to: said, and nothing sent.
fn nothing_to_tell_elsewhere(state: &StateDir) -> bool {
    let Some(name) = elsewhere(state) else {
        return false;
    };
    tracing::info!(
        "on {name}: no auto scaling group or CloudFormation stack to tell (bootstage.lifecycle.asg and .cloudformation are AWS's)"
    );
    true
}

/// The instance's facts: `instance.json`, else IMDS (the metadata stage may have failed).
pub(crate) async fn whoami(state: &StateDir) -> Result<Facts> {
    identity::whoami(state)
        .await
        .map_err(|e| LifecycleError::NoIdentity(e).into())
}

async fn connect(state: &StateDir, config: Config, deadline: Deadline) -> Result<Link> {
    let facts = whoami(state).await?;
    let instance_id = facts
        .instance_id
        .clone()
        .ok_or_else(|| LifecycleError::NoIdentity("no instance id".into()))?;
    let aws = Aws::load(
        facts.region.clone(),
        &["AUTO_SCALING", "CLOUDFORMATION"],
        Duration::from_secs(10),
    )
    .await
    .map_err(|e| OrchestratorError::Undelivered(e.to_string()))?;
    let hook = match &config.asg {
        Some(asg) => {
            let tag = facts
                .tags
                .as_ref()
                .and_then(|t| t.get(orchestrator::GROUP_TAG))
                .map(String::as_str);
            LaunchHook::new(&aws, asg, &instance_id, tag, deadline).await?
        }
        None => None,
    };
    let launched = facts
        .pending_time
        .as_deref()
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .unwrap_or_else(since_boot);
    Ok(Link {
        config,
        aws,
        instance_id,
        hook,
        target: facts.target_lifecycle_state.clone(),
        launched,
    })
}

fn now() -> String {
    status::timestamp(SystemTime::now())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Turns a delivery into its record, logging it.
fn signal(
    what: &str,
    result: &str,
    delivery: &std::result::Result<Delivery, OrchestratorError>,
) -> Signal {
    let (delivered, note) = match delivery {
        Ok(Delivery::Delivered) => {
            tracing::info!("{what} {result}: delivered");
            (true, None)
        }
        Ok(Delivery::NothingWaiting(why)) => {
            tracing::info!("{what} {result}: nothing was waiting for it ({why}); done");
            (true, Some(why.clone()))
        }
        Err(e) => {
            tracing::error!("{what} {result}: not delivered: {e}");
            (false, Some(e.to_string()))
        }
    };
    Signal {
        result: result.into(),
        at: now(),
        delivered,
        note,
    }
}

/// Sends the final signals: CONTINUE and SUCCESS, or ABANDON and FAILURE, at once, and
/// records them. Fails (75) when one was not delivered.
async fn finish(state: &StateDir, link: &Link, success: bool) -> Result<()> {
    finish_to(state, link, success, true).await
}

/// [`finish`], with CloudFormation told too (`cfn`) or only the group (going into
/// service from a warm pool: the stack heard of this instance at its first boot).
async fn finish_to(state: &StateDir, link: &Link, success: bool, cfn: bool) -> Result<()> {
    let deadline = Deadline::after(SIGNAL_TIMEOUT);
    // No launch hook named (only a termination hook): the boot tells the group nothing.
    let launch_hook = link.config.asg.as_ref().is_some_and(|a| a.hook.is_some());
    let asg = async {
        let hook = link.hook.as_ref().filter(|_| launch_hook)?;
        let result = if success { "CONTINUE" } else { "ABANDON" };
        // A boot past its launch (a reboot in the warm pool or in service) has no action
        // to complete: not even a second CONTINUE is sent.
        // IMDS showing no target state (404) means no transition yet: nothing to ask.
        let past = match link.target.is_some() {
            false => None,
            true => match hook.lifecycle_state(deadline).await {
                Ok(state) if !orchestrator::launch_may_wait(state.as_deref()) => state,
                Ok(_) => None,
                Err(e) => {
                    tracing::warn!("{e}; completing the launch action all the same");
                    None
                }
            },
        };
        let delivery = match past {
            Some(state) => Ok(Delivery::NothingWaiting(format!(
                "the group has the instance {state}: its launch action is complete"
            ))),
            None => hook.complete(success, deadline).await,
        };
        Some((
            signal("CompleteLifecycleAction", result, &delivery),
            delivery,
        ))
    };
    let cfn = async {
        let cfn = link.config.cloudformation.as_ref().filter(|_| cfn)?;
        let result = if success { "SUCCESS" } else { "FAILURE" };
        let delivery =
            orchestrator::signal_resource(&link.aws, cfn, &link.instance_id, success, deadline)
                .await;
        Some((signal("SignalResource", result, &delivery), delivery))
    };
    let (asg, cfn) = tokio::join!(asg, cfn);
    let group = link
        .hook
        .as_ref()
        .map(|h| (h.group.clone(), h.hook.clone()));
    lifecycle::update(state, |r| {
        if let Some((group, hook)) = group {
            r.group = Some(group);
            r.hook = Some(hook);
        }
        // Two senders may race (a release and the end of a hold): the signal the service
        // took stays on record, not the later one that found nothing waiting.
        let keep = |old: &Option<Signal>| old.as_ref().is_some_and(Signal::taken);
        if let Some((s, _)) = &asg
            && !keep(&r.asg)
        {
            r.asg = Some(s.clone());
        }
        if let Some((s, _)) = &cfn
            && !keep(&r.cloudformation)
        {
            r.cloudformation = Some(s.clone());
        }
    })?;
    let failed: Vec<String> = [asg, cfn]
        .into_iter()
        .flatten()
        .filter_map(|(_, d)| d.err().map(|e| e.to_string()))
        .collect();
    match failed.is_empty() {
        true => Ok(()),
        false => Err(OrchestratorError::Undelivered(failed.join("; ")).into()),
    }
}

/// After the ready notice (`from_app` false) or from the app's `lifecycle complete`:
/// CONTINUE and SUCCESS, unless the settings leave it to the app.
pub async fn ready(state: &StateDir, settings: &Settings, from_app: bool) -> Result<()> {
    let Some(config) = config(state, &settings.config)? else {
        tracing::info!("no bootstage.lifecycle: no orchestrator to tell");
        return Ok(());
    };
    if nothing_to_tell_elsewhere(state) {
        return Ok(());
    }
    // In a warm pool the app does not run: the action of entering the pool is ours to
    // complete whatever `complete_on` says (the app completes the one of leaving it).
    if !from_app && config.complete_on == CompleteOn::App && !warm_boot(state) {
        tracing::info!(
            "bootstage.lifecycle.complete_on is \"app\": the app runs `bootstage lifecycle complete` when it is ready"
        );
        return Ok(());
    }
    let link = connect(state, config, Deadline::after(SIGNAL_TIMEOUT)).await?;
    finish(state, &link, true).await
}

/// Whether this boot began in a warm pool (`Warmed:*` in `instance.json`).
fn warm_boot(state: &StateDir) -> bool {
    let at_boot = Facts::of(state).and_then(|f| f.target_lifecycle_state);
    matches!(imds::target(at_boot.as_deref()), imds::Target::Warm(_))
}

/// Going into service from the warm pool: the warm action's signal moves aside (to
/// `warm` in the record), so the action of leaving the pool is completed, held or
/// abandoned on its own, as a boot's is.
pub fn entering_service(state: &StateDir) -> Result<()> {
    lifecycle::update(state, |r| {
        if r.warm.is_none() && r.asg.is_some() {
            r.warm = r.asg.take();
            r.hold = None;
        }
    })?;
    Ok(())
}

/// CONTINUE for the action of leaving the warm pool for service, unless the settings
/// leave it to the app (`complete_on: app`: its `lifecycle complete` sends it).
pub async fn into_service(state: &StateDir, settings: &Settings) -> Result<()> {
    let Some(config) = config(state, &settings.config)? else {
        return Ok(());
    };
    if config.asg.as_ref().is_none_or(|a| a.hook.is_none()) {
        return Ok(());
    }
    if config.complete_on == CompleteOn::App {
        tracing::info!(
            "bootstage.lifecycle.complete_on is \"app\": the app runs `bootstage lifecycle complete` when it is ready"
        );
        return Ok(());
    }
    let link = connect(state, config, Deadline::after(SIGNAL_TIMEOUT)).await?;
    finish_to(state, &link, true, false).await
}

/// ABANDON and FAILURE, to send once the failure notice is out.
pub struct Abandon(Config);

impl Abandon {
    pub async fn send(self, state: &StateDir) -> Result<()> {
        // On the way out of a warm pool the stack heard of this instance at its first
        // boot: a failure now is the group's business only.
        let left_pool = lifecycle::read(state)?.is_some_and(|r| r.warm.is_some());
        let link = connect(state, self.0, Deadline::after(SIGNAL_TIMEOUT)).await?;
        finish_to(state, &link, false, !left_pool).await
    }
}

/// Before the failure notice: decides a hold (written to `lifecycle/record.json` at once, so the
/// notice and the watcher see it), or returns the abandon to send after the notice. Only
/// a hold talks to AWS here: an abandon must not delay the notice.
pub async fn failure(
    state: &StateDir,
    settings: &Settings,
    reason: &str,
) -> Result<Option<Abandon>> {
    let Some(config) = config(state, &settings.config)? else {
        return Ok(None);
    };
    if nothing_to_tell_elsewhere(state) {
        return Ok(None);
    }
    let Some(hold_for) = config
        .asg
        .as_ref()
        .filter(|a| a.on_failure == OnFailure::Hold && a.hook.is_some())
        .map(|a| a.hold_for)
    else {
        return Ok(Some(Abandon(config)));
    };
    if lifecycle::read(state)?.is_some_and(|r| lifecycle::settled(&r.asg)) {
        tracing::info!("the lifecycle action is already complete: no hold");
        return Ok(Some(Abandon(config)));
    }
    let link = connect(state, config, Deadline::after(SIGNAL_TIMEOUT)).await?;
    let Some(hook) = link.hook.as_ref() else {
        return Ok(Some(Abandon(link.config)));
    };
    let hold = plan_hold(hook, hold_for, link.launched, reason).await;
    tracing::warn!(
        until = hold.until,
        "holding this failed instance for debugging{}: `bootstage release --abandon` ends the hold (or `--continue` to put it in service)",
        hold.clamped
            .as_deref()
            .map(|c| format!(" ({c})"))
            .unwrap_or_default()
    );
    lifecycle::update(state, |r| {
        r.group = Some(hook.group.clone());
        r.hook = Some(hook.hook.clone());
        r.hold = Some(hold);
    })?;
    Ok(None)
}

/// The hold, cut to what the group allows: a lifecycle action lasts at most 100 heartbeat
/// timeouts or 48 h, whichever is shorter, counted from the instance's launch, with one
/// heartbeat timeout to spare.
async fn plan_hold(hook: &LaunchHook, asked: Duration, launched: Duration, reason: &str) -> Hold {
    let timeout = match hook
        .heartbeat_timeout(Deadline::after(SIGNAL_TIMEOUT))
        .await
    {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::warn!(
                "the hook's heartbeat timeout is unknown ({e}); the hold is cut to what AWS's shortest timeout (30 s) would allow"
            );
            None
        }
    };
    let limit = (timeout.unwrap_or(orchestrator::MIN_HEARTBEAT_TIMEOUT) * 100)
        .min(orchestrator::MAX_GLOBAL_TIMEOUT);
    let room = limit
        .saturating_sub(launched)
        .saturating_sub(timeout.unwrap_or(FALLBACK_HEARTBEAT));
    let room = Duration::from_secs(room.as_secs());
    let (held, clamped) = match asked > room {
        true => (
            room,
            Some(format!(
                "hold_for {} cut to {}: the group ends a lifecycle action after {}",
                humantime::format_duration(asked),
                humantime::format_duration(room),
                humantime::format_duration(limit)
            )),
        ),
        false => (asked, None),
    };
    let until = SystemTime::now() + held;
    Hold {
        reason: reason.into(),
        since: now(),
        until: status::timestamp(until),
        until_unix: until
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default(),
        clamped,
    }
}

/// Time since the kernel booted (CLOCK_BOOTTIME).
fn since_boot() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(Duration::from)
        .unwrap_or_default()
}

/// `bootstage release [--continue|--abandon]`: ends a hold now.
pub async fn release(state: &StateDir, settings: &Settings, proceed: bool) -> Result<()> {
    let held = lifecycle::read(state)?.and_then(|r| match lifecycle::settled(&r.asg) {
        true => None,
        false => r.hold,
    });
    let Some(hold) = held else {
        return Err(LifecycleError::NotHeld.into());
    };
    let config = config(state, &settings.config)?.ok_or(LifecycleError::NotHeld)?;
    tracing::info!(since = hold.since, "releasing the held instance");
    let link = connect(state, config, Deadline::after(SIGNAL_TIMEOUT)).await?;
    finish(state, &link, proceed).await
}

/// `bootstage lifecycle watch`: the launch hook's heartbeats until it is completed (by us
/// or anyone), a hold ends, or SIGTERM; then, when the instance's leaving needs watching
/// (`drain::watched`), its later life until it drains and leaves (`drain::watch`). Tells
/// systemd READY once it knows what to keep alive.
pub async fn watch(
    state: &StateDir,
    settings: &Settings,
    life: &drain::Watch,
    notifier: Notifier,
) -> Result<()> {
    let mut stop = Stop::install()
        .map_err(|e| OrchestratorError::Undelivered(format!("cannot watch for SIGTERM: {e}")))?;
    if let Some(name) = elsewhere(state) {
        tracing::info!(
            "on {name}: Auto Scaling hooks, the group, CloudFormation and the status tags are AWS's; none is asked"
        );
        notifier.ready(&format!("on {name}: no launch hook to keep alive"));
        if cloud(state) == Provider::OpenStack {
            // Nova's metadata (and a config drive) shows no interruption: nothing to poll,
            // and EC2's paths are not asked in its stead.
            tracing::info!(
                "on OpenStack: Nova's metadata has no interruption or maintenance events; the instance's later life is not watched (drain.d, maintenance.d and the other hooks of it never run there)"
            );
            notifier.status("on OpenStack: nothing to watch");
            return Ok(());
        }
        let config = config(state, &settings.config)?;
        if !drain::watched(config.as_ref(), &life.dirs) {
            return Ok(());
        }
        return drain::watch(state, config, life, notifier, &mut stop).await;
    }
    // `bootstage:status=booting` beside the launch's watch (bounded, never an error); a
    // signal ends its wait too.
    let mut booting = std::pin::pin!(tags::publish(
        state,
        Path::new(tags::REPORT_CONFIG),
        Status::Booting,
        None
    ));
    let (launch, tagged) = {
        let mut launch = std::pin::pin!(keep_launch_alive(state, settings, notifier, &mut stop));
        let mut tagged = false;
        loop {
            tokio::select! {
                launch = &mut launch => break (launch, tagged),
                () = &mut booting, if !tagged => tagged = true,
            }
        }
    };
    if matches!(launch, Ok(Launch::Stopped)) {
        return Ok(());
    }
    if !tagged {
        tokio::select! {
            () = &mut booting => {}
            () = stop.requested() => return Ok(()),
        }
    }
    launch?;
    let config = config(state, &settings.config)?;
    if !drain::watched(config.as_ref(), &life.dirs) {
        return Ok(());
    }
    drain::watch(state, config, life, notifier, &mut stop).await
}

/// What `bootstage.lifecycle.asg` without a watcher means, for `status` and the ready
/// notice's journal.
pub const UNWATCHED: &str = "bootstage.lifecycle.asg is set, but bootstage-lifecycle.service never started: nothing keeps the launch hook alive or holds a failed instance; install the unit and make sure it is not masked (systemctl unmask bootstage-lifecycle.service; bootstage.target wants it)";

/// Whether the boot is done with an Auto Scaling hook configured and no lifecycle watcher
/// ever started.
pub fn unwatched(state: &StateDir, settings: &Settings) -> bool {
    let configured = config(state, &settings.config)
        .ok()
        .flatten()
        .is_some_and(|c| c.asg.is_some());
    let started = lifecycle::read(state)
        .ok()
        .flatten()
        .is_some_and(|r| r.watcher_started_at.is_some());
    // Off EC2 there is no launch hook to keep alive: nothing is missing.
    configured && !started && cloud(state) == Provider::Aws
}

/// The lines `bootstage status` prints for the record.
pub fn describe(record: &Record) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(group) = &record.group {
        let mut line = format!(
            "auto scaling: group {group}, hook {}, {} heartbeat(s)",
            record.hook.as_deref().unwrap_or("?"),
            record.heartbeats
        );
        if let Some(e) = &record.heartbeat_error {
            line += &format!("; last heartbeat failed: {e}");
        }
        lines.push(line);
    }
    if let (Some(hold), None) = (&record.hold, &record.asg) {
        lines.push(format!(
            "held for debugging until {} ({}): `bootstage release --abandon` ends it, `--continue` puts it in service",
            hold.until, hold.reason
        ));
        if let Some(c) = &hold.clamped {
            lines.push(format!("  {c}"));
        }
    }
    for (name, s) in [
        ("CompleteLifecycleAction", &record.asg),
        ("SignalResource", &record.cloudformation),
    ] {
        if let Some(s) = s {
            lines.push(format!("{name} {}", said(s)));
        }
    }
    lines.extend(drain::describe(record));
    if let Some(s) = &record.termination {
        lines.push(format!(
            "CompleteLifecycleAction (termination hook) {}",
            said(s)
        ));
    }
    lines
}

/// `RESULT at TIME: how it went`, for `status`.
fn said(s: &Signal) -> String {
    let how = match (s.delivered, &s.note) {
        (true, None) => "delivered".to_string(),
        (true, Some(n)) => format!("nothing was waiting ({n})"),
        (false, n) => format!("NOT delivered: {}", n.as_deref().unwrap_or("?")),
    };
    format!("{} at {}: {how}", s.result, s.at)
}
