//! The instance's later life, as the lifecycle watcher decides it: what each look at the
//! provider's metadata means ([`next`]), and when the termination action may be completed
//! ([`leaving`]); the parsers of what IMDS serves there. Pure: no I/O, table tests below;
//! `drain.rs` acts on the decisions.
//!
//! On EC2, a look is IMDS's four paths; on Compute Engine, the last long-polled answers of
//! `instance/preempted` and `instance/maintenance-event`; on Azure, the scheduled events
//! that concern this VM ([`azure_events`]: its name in their `Resources`). The other
//! fields stay empty.
//!
//! - A drain (one per instance life, whatever the number of notices): the target state
//!   `Terminated` or `Warmed:Terminated` (reason `scale-in`), a Spot `instance-action`
//!   (`spot`), a scheduled `instance-stop`/`instance-retirement` (`maintenance`), begun so
//!   that it ends by `NotBefore` less the Spot margin; on GCP, `instance/preempted` `TRUE`
//!   (`preempted`, about 30 s ahead) or `instance/maintenance-event`
//!   `TERMINATE_ON_HOST_MAINTENANCE` (`maintenance`, about 60 s ahead). Its deadline: now
//!   plus `drain.within`, or sooner if the notice leaves less (the Spot `time`, the event's
//!   `NotBefore`, GCP's notice, each less `spot_margin`), never before a second from now.
//! - A rebalance recommendation: each `noticeTime` seen once. The first one of an episode
//!   runs `rebalance.d`; later ones only push the undo back; `rebalance-undo.d` runs once
//!   `rebalance_undo_after` passed since the last one with no interruption. A drain ends
//!   the episode without an undo.
//! - A scheduled maintenance event (`State` active): `maintenance.d` once per `EventId`,
//!   as soon as it is seen (before its `NotBefore`). On GCP, `MIGRATE_ON_HOST_MAINTENANCE`
//!   (a live migration in about 60 s): `maintenance.d` once per change to it, its id
//!   `gcp:MIGRATE_ON_HOST_MAINTENANCE:ETAG`; a restarted watcher that finds the answer it
//!   acted on (the same ETag) runs nothing, while a change to it seen after another value
//!   runs the hooks again even if the server repeats the ETag.
//! - While the target state is `Warmed:*` (but `Warmed:Terminated`) the app is not
//!   running: recommendations and events wait until the instance is in service.
//! - Azure's scheduled events: `Preempt` (a Spot VM evicted, at least 30 s ahead) drains
//!   with the reason `preempted`, as GCP's preemption; `Terminate` (a scale set deleting
//!   the VM, its terminate notification 5 to 15 min ahead) drains with `scale-in`, as
//!   AWS's group removing an instance; either at once, its deadline `NotBefore` less
//!   `spot_margin` (or `within`, if sooner; the type's minimum notice when `NotBefore` is
//!   blank, as once the event started). `Reboot`, `Redeploy` and `Freeze` run
//!   `maintenance.d` once per `EventId`; once that run is over (done, failed or cut at
//!   `--hook-timeout`) and the event still waits (`Scheduled`), it is approved
//!   ([`Act::Approve`]), once, so Azure may go ahead before `NotBefore` as Microsoft
//!   recommends; a drain's event is approved after the drain (`Plan::approve`). An event
//!   of another type runs `maintenance.d` and is never approved; a `Started` event is not
//!   approved (it is under way).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::imds::azure::ScheduledEvent;
use crate::settings::lifecycle::DrainConfig;

/// The four paths, polled with one IMDSv2 token.
pub const TARGET: &str = crate::imds::TARGET_LIFECYCLE_STATE;
pub const SPOT: &str = "/latest/meta-data/spot/instance-action";
pub const REBALANCE: &str = "/latest/meta-data/events/recommendations/rebalance";
pub const MAINTENANCE: &str = "/latest/meta-data/events/maintenance/scheduled";

/// Compute Engine's two keys, long-polled (below `/computeMetadata/v1/`).
pub const GCP_PREEMPTED: &str = "instance/preempted";
pub const GCP_MAINTENANCE: &str = "instance/maintenance-event";
/// `instance/maintenance-event`'s values, as Google documents them.
pub const HOST_NONE: &str = "NONE";
pub const HOST_MIGRATE: &str = "MIGRATE_ON_HOST_MAINTENANCE";
pub const HOST_TERMINATE: &str = "TERMINATE_ON_HOST_MAINTENANCE";
/// A preemption's notice: Compute Engine stops the VM about 30 s after `preempted` is TRUE.
pub const PREEMPT_NOTICE: u64 = 30;
/// A host maintenance event's notice: the key changes about 60 s before the event.
pub const HOST_NOTICE: u64 = 60;

/// Azure's scheduled event types, as Microsoft documents them.
pub const AZURE_PREEMPT: &str = "Preempt";
pub const AZURE_TERMINATE: &str = "Terminate";
/// The types whose event is approved once `maintenance.d` ran for it.
const AZURE_APPROVED_AFTER_HOOKS: [&str; 3] = ["Reboot", "Redeploy", "Freeze"];
/// The minimum notice Microsoft documents for a `Preempt` and a `Terminate`: the deadline
/// when `NotBefore` is blank (the event started) or does not read.
pub const AZURE_PREEMPT_NOTICE: u64 = 30;
pub const AZURE_TERMINATE_NOTICE: u64 = 300;
/// An event waiting for its `NotBefore` (or an approval), as opposed to `Started`.
pub const AZURE_SCHEDULED: &str = "Scheduled";

/// A Spot interruption notice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spot {
    /// `terminate`, `stop` or `hibernate`.
    pub action: String,
    pub time: String,
    /// `time`, if it reads as RFC 3339.
    pub time_unix: Option<u64>,
}

/// A scheduled maintenance event, as IMDS serves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub id: String,
    pub code: String,
    pub state: String,
    pub not_before: String,
    /// `NotBefore` (`21 Jan 2019 09:00:43 GMT`), if it reads.
    pub not_before_unix: Option<u64>,
    /// The event as served, for the hooks' `BOOTSTAGE_MAINTENANCE_EVENT` and the notice.
    pub raw: Value,
}

/// One look at IMDS: each path's answer; `None` (or empty) for a 404 or a failed read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Look {
    pub target: Option<String>,
    pub spot: Option<Spot>,
    /// The recommendation's `noticeTime`.
    pub rebalance: Option<String>,
    pub maintenance: Vec<Event>,
    /// GCP: `instance/preempted` is `TRUE`.
    pub preempted: bool,
    /// GCP: `instance/maintenance-event`, once answered.
    pub host_maintenance: Option<HostMaintenance>,
    /// Azure: the scheduled events that concern this VM ([`azure_events`]); `code` is
    /// the `EventType`, `state` the `EventStatus`.
    pub scheduled: Vec<Event>,
}

/// Compute Engine's `instance/maintenance-event`: the value and its ETag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostMaintenance {
    pub value: String,
    pub etag: Option<String>,
}

impl HostMaintenance {
    /// As a maintenance event: its id names the value and the answer's ETag.
    pub fn event(&self) -> Event {
        let id = match &self.etag {
            Some(etag) => format!("gcp:{}:{etag}", self.value),
            None => format!("gcp:{}", self.value),
        };
        Event {
            raw: serde_json::json!({"EventId": id, "Code": self.value, "Source": GCP_MAINTENANCE}),
            id,
            code: self.value.clone(),
            state: "active".into(),
            not_before: String::new(),
            not_before_unix: None,
        }
    }
}

/// What the watcher remembers of what it acted on (kept in `lifecycle/record.json`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    /// A drain has begun: nothing else is acted on.
    pub draining: bool,
    pub rebalance_seen: Vec<String>,
    /// `rebalance-undo.d` is due then (Unix seconds): an episode is in progress.
    pub undo_due: Option<u64>,
    pub maintenance_done: Vec<String>,
    /// Of those, the events whose run ended (a watcher restarted mid-run has not).
    pub maintenance_ran: Vec<String>,
    /// GCP: the value of `instance/maintenance-event` this watcher saw before this look
    /// (`None` until it saw one: a watcher just started).
    pub host_before: Option<String>,
    /// Azure: the events approved (their EventId).
    pub approved: Vec<String>,
    /// Azure: the events whose `maintenance.d` run is queued or running in this watcher.
    pub busy: Vec<String>,
}

/// Why the instance drains: `BOOTSTAGE_DRAIN_REASON`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    ScaleIn,
    Spot,
    /// A Compute Engine Spot or preemptible VM being preempted.
    Preempted,
    Maintenance,
}

impl Reason {
    pub fn name(self) -> &'static str {
        match self {
            Reason::ScaleIn => "scale-in",
            Reason::Spot => "spot",
            Reason::Preempted => "preempted",
            Reason::Maintenance => "maintenance",
        }
    }
}

/// A drain to begin now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub reason: Reason,
    /// What was seen, in a few words (for the log, the record and the notice).
    pub why: String,
    pub deadline_unix: u64,
    /// Variables for `drain.d` beside the reason and the deadline.
    pub env: Vec<(String, String)>,
    /// Azure: the event to approve once the drain is over.
    pub approve: Option<String>,
}

/// What to do after one look.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Act {
    /// Run `maintenance.d` for this event.
    Maintenance(Event),
    /// A new recommendation: remember it, push the undo to `undo_due`, and run
    /// `rebalance.d` if it opens an episode (`hooks`).
    Rebalance {
        notice: String,
        hooks: bool,
        undo_due: u64,
    },
    /// Run `rebalance-undo.d`: no interruption followed.
    Undo,
    /// Begin the drain (and nothing else from this look).
    Drain(Plan),
    /// Azure: approve this event (`StartRequests`) and record it.
    Approve(Event),
}

/// Maintenance codes whose event stops the instance or retires it: a drain before
/// `NotBefore`. Reboots (`instance-reboot`, `system-reboot`) and `system-maintenance`
/// come back: their hooks run, nothing drains.
const LEAVING_CODES: &[&str] = &["instance-stop", "instance-retirement"];

/// The decisions of one look at `now` (Unix seconds).
pub fn next(memory: &Memory, look: &Look, now: u64, drain: &DrainConfig) -> Vec<Act> {
    if memory.draining {
        return Vec::new();
    }
    if let Some(plan) = drain_plan(look, now, drain) {
        return vec![Act::Drain(plan)];
    }
    let warmed = look
        .target
        .as_deref()
        .is_some_and(|t| t.starts_with("Warmed:"));
    let mut acts = Vec::new();
    if !warmed {
        for event in &look.maintenance {
            let active = matches!(event.state.as_str(), "" | "active");
            let done = memory.maintenance_done.contains(&event.id)
                || acts
                    .iter()
                    .any(|a| matches!(a, Act::Maintenance(e) if e.id == event.id));
            if active && !done && !event.id.is_empty() {
                acts.push(Act::Maintenance(event.clone()));
            }
        }
    }
    if !warmed && let Some(event) = migration(memory, look) {
        acts.push(Act::Maintenance(event));
    }
    for event in &look.scheduled {
        let ran = memory.maintenance_done.contains(&event.id);
        let seen = acts.iter().any(|a| match a {
            Act::Maintenance(e) | Act::Approve(e) => e.id == event.id,
            _ => false,
        });
        if seen {
            continue;
        }
        if !ran {
            acts.push(Act::Maintenance(event.clone()));
        } else if event.state == AZURE_SCHEDULED
            && AZURE_APPROVED_AFTER_HOOKS.contains(&event.code.as_str())
            && only_this_vm(event)
            && memory.maintenance_ran.contains(&event.id)
            && !memory.busy.contains(&event.id)
            && !memory.approved.contains(&event.id)
        {
            acts.push(Act::Approve(event.clone()));
        }
    }
    let new_notice = look
        .rebalance
        .as_ref()
        .filter(|n| !warmed && !memory.rebalance_seen.contains(n));
    match (new_notice, memory.undo_due) {
        (Some(notice), undo) => acts.push(Act::Rebalance {
            notice: notice.clone(),
            hooks: undo.is_none(),
            // Whole seconds, rounded up: never sooner than the setting.
            undo_due: now + drain.rebalance_undo_after.as_secs() + 1,
        }),
        (None, Some(due)) if now >= due => acts.push(Act::Undo),
        (None, _) => {}
    }
    acts
}

/// GCP: a live migration to run `maintenance.d` for, once per change to it (see the
/// module's text for restarts and repeated ETags).
fn migration(memory: &Memory, look: &Look) -> Option<Event> {
    let host = look.host_maintenance.as_ref()?;
    if host.value != HOST_MIGRATE || memory.host_before.as_deref() == Some(HOST_MIGRATE) {
        return None;
    }
    let event = host.event();
    let done = memory.maintenance_done.contains(&event.id);
    // Done and no other value seen by this watcher: a restart within the same event.
    (!done || memory.host_before.is_some()).then_some(event)
}

/// The drain this look calls for, if any: the group's decision first, then a Spot
/// notice, a GCP preemption or host termination, then a stop or retirement whose time to
/// drain has come.
fn drain_plan(look: &Look, now: u64, drain: &DrainConfig) -> Option<Plan> {
    let within = now + drain.within.as_secs();
    let margin = drain.spot_margin.as_secs();
    // Never a deadline already past: the hooks get at least a second.
    let deadline = |by: Option<u64>| {
        by.map_or(within, |t| within.min(t.saturating_sub(margin)))
            .max(now + 1)
    };
    if let Some(target @ ("Terminated" | "Warmed:Terminated")) = look.target.as_deref() {
        return Some(Plan {
            reason: Reason::ScaleIn,
            why: format!("target lifecycle state {target}"),
            deadline_unix: deadline(None),
            env: Vec::new(),
            approve: None,
        });
    }
    if let Some(spot) = &look.spot {
        return Some(Plan {
            reason: Reason::Spot,
            why: format!("Spot instance-action {} at {}", spot.action, spot.time),
            deadline_unix: deadline(spot.time_unix),
            env: vec![
                ("BOOTSTAGE_SPOT_ACTION".into(), spot.action.clone()),
                ("BOOTSTAGE_SPOT_TIME".into(), spot.time.clone()),
            ],
            approve: None,
        });
    }
    if look.preempted {
        return Some(Plan {
            reason: Reason::Preempted,
            why: format!("{GCP_PREEMPTED} TRUE"),
            deadline_unix: deadline(Some(now + PREEMPT_NOTICE)),
            env: Vec::new(),
            approve: None,
        });
    }
    if let Some(host) = look
        .host_maintenance
        .as_ref()
        .filter(|h| h.value == HOST_TERMINATE)
    {
        return Some(Plan {
            reason: Reason::Maintenance,
            why: format!("{GCP_MAINTENANCE} {HOST_TERMINATE}"),
            deadline_unix: deadline(Some(now + HOST_NOTICE)),
            env: event_env(&host.event()),
            approve: None,
        });
    }
    let azure = |code: &str| look.scheduled.iter().find(|e| e.code == code);
    if let Some((e, reason, notice)) = azure(AZURE_PREEMPT)
        .map(|e| (e, Reason::Preempted, AZURE_PREEMPT_NOTICE))
        .or_else(|| azure(AZURE_TERMINATE).map(|e| (e, Reason::ScaleIn, AZURE_TERMINATE_NOTICE)))
    {
        let at = e.not_before_unix.unwrap_or(now + notice);
        return Some(Plan {
            reason,
            why: match e.not_before.is_empty() {
                true => format!("scheduled event {} {} {}", e.code, e.id, e.state),
                false => format!(
                    "scheduled event {} {} not before {}",
                    e.code, e.id, e.not_before
                ),
            },
            deadline_unix: deadline(Some(at)),
            env: event_env(e),
            approve: (e.state == AZURE_SCHEDULED && only_this_vm(e)).then(|| e.id.clone()),
        });
    }
    look.maintenance
        .iter()
        .filter(|e| LEAVING_CODES.contains(&e.code.as_str()))
        .filter(|e| matches!(e.state.as_str(), "" | "active"))
        .filter_map(|e| Some((e, e.not_before_unix?)))
        // Begun so that a whole `within` fits before NotBefore less the margin.
        .find(|(_, at)| now + drain.within.as_secs() + margin >= *at)
        .map(|(e, at)| Plan {
            reason: Reason::Maintenance,
            why: format!(
                "maintenance {} {} not before {}",
                e.code, e.id, e.not_before
            ),
            deadline_unix: deadline(Some(at)),
            env: event_env(e),
            approve: None,
        })
}

/// Azure: the scheduled events that concern the VM named `vm` (its name among their
/// `Resources`; Azure's names are case-insensitive), as events for the decisions.
/// Scheduled events go to every VM of an availability set or a scale set's placement
/// group: an event naming only others is none of this VM's business.
pub fn azure_events(events: &[ScheduledEvent], vm: &str) -> Vec<Event> {
    events
        .iter()
        .filter(|e| e.resources.iter().any(|r| r.eq_ignore_ascii_case(vm)))
        .map(|e| Event {
            id: e.id.clone(),
            code: e.kind.clone(),
            state: e.status.clone(),
            not_before_unix: rfc1123_unix(&e.not_before),
            not_before: e.not_before.clone(),
            raw: e.raw.clone(),
        })
        .collect()
}

/// Whether an Azure event names this VM alone (`azure_events` kept only those that name
/// it). Approving an event lets Azure go ahead for every VM it names: one that names
/// others too is left to its `NotBefore`, so that no other VM is rebooted, frozen or
/// evicted before its own hooks or drain are done.
fn only_this_vm(event: &Event) -> bool {
    event
        .raw
        .get("Resources")
        .and_then(Value::as_array)
        .is_some_and(|names| names.len() == 1)
}

/// Azure's `NotBefore`, RFC 1123 (`Mon, 19 Sep 2016 18:29:47 GMT`), in Unix seconds: the
/// weekday (not checked), then the time as AWS writes it.
pub fn rfc1123_unix(text: &str) -> Option<u64> {
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    let (day, rest) = text.trim().split_once(", ")?;
    DAYS.contains(&day).then(|| event_time_unix(rest))?
}

/// A maintenance event's variables for its hooks.
pub fn event_env(event: &Event) -> Vec<(String, String)> {
    let field = |k: &str| event.raw.get(k).and_then(Value::as_str).unwrap_or_default();
    [
        ("BOOTSTAGE_MAINTENANCE_EVENT", event.raw.to_string()),
        ("BOOTSTAGE_MAINTENANCE_EVENT_ID", event.id.clone()),
        ("BOOTSTAGE_MAINTENANCE_CODE", event.code.clone()),
        ("BOOTSTAGE_MAINTENANCE_STATE", event.state.clone()),
        (
            "BOOTSTAGE_MAINTENANCE_DESCRIPTION",
            field("Description").into(),
        ),
        ("BOOTSTAGE_MAINTENANCE_NOT_BEFORE", event.not_before.clone()),
        ("BOOTSTAGE_MAINTENANCE_NOT_AFTER", field("NotAfter").into()),
        (
            "BOOTSTAGE_MAINTENANCE_NOT_BEFORE_DEADLINE",
            field("NotBeforeDeadline").into(),
        ),
    ]
    .into_iter()
    // A variable cannot hold a NUL; AWS's text has none, and an odd one is left out.
    .filter(|(_, v)| !v.contains('\0'))
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// What to do about the termination action at one look at the group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Leave {
    /// Not yet: ask the group again (heartbeating once it waits).
    Wait,
    /// Complete it with CONTINUE now.
    Complete,
    /// Nothing to complete (why).
    Done(String),
    /// The deadline passed and the instance never waited in `Terminating:Wait` (why).
    GiveUp(String),
}

/// From the group's LifecycleState for the instance (`None`: not listed), whether the
/// drain is over, and whether its deadline has passed. CONTINUE only in
/// `Terminating:Wait` (or `Warmed:Terminating:Wait`) and only after the drain: before
/// that, AWS answers "No active Lifecycle Action".
pub fn leaving(state: Option<&str>, drained: bool, past_deadline: bool) -> Leave {
    match state {
        None => Leave::Done("the group no longer lists the instance".into()),
        Some(
            s @ ("Terminating:Proceed"
            | "Warmed:Terminating:Proceed"
            | "Terminated"
            | "Warmed:Terminated"
            | "Detached"),
        ) => Leave::Done(format!(
            "the group has the instance {s}: nothing waits for us"
        )),
        Some("Terminating:Wait" | "Warmed:Terminating:Wait") if drained => Leave::Complete,
        Some("Terminating:Wait" | "Warmed:Terminating:Wait") => Leave::Wait,
        Some(s) if drained && past_deadline => Leave::GiveUp(format!(
            "the group still has the instance {s} at the drain's deadline: no termination action waits"
        )),
        Some(_) => Leave::Wait,
    }
}

/// Whether the group's state is a termination action waiting for us (heartbeats help).
pub fn waiting(state: Option<&str>) -> bool {
    matches!(state, Some("Terminating:Wait" | "Warmed:Terminating:Wait"))
}

/// `spot/instance-action`: `{"action": …, "time": …}`.
pub fn spot(body: &str) -> Option<Spot> {
    let value: Value = serde_json::from_str(body).ok()?;
    let text = |k: &str| value.get(k).and_then(Value::as_str).map(str::to_string);
    let time = text("time").unwrap_or_default();
    Some(Spot {
        action: text("action")?,
        time_unix: rfc3339_unix(&time),
        time,
    })
}

/// `events/recommendations/rebalance`: `{"noticeTime": …}`.
pub fn rebalance(body: &str) -> Option<String> {
    let value: Value = serde_json::from_str(body).ok()?;
    value
        .get("noticeTime")
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// `events/maintenance/scheduled`: a JSON array of events; what does not read is left out.
pub fn maintenance(body: &str) -> Vec<Event> {
    let Ok(Value::Array(events)) = serde_json::from_str::<Value>(body) else {
        return Vec::new();
    };
    events
        .into_iter()
        .filter_map(|raw| {
            let text = |k: &str| raw.get(k).and_then(Value::as_str).map(str::to_string);
            let not_before = text("NotBefore").unwrap_or_default();
            Some(Event {
                id: text("EventId")?,
                code: text("Code").unwrap_or_default(),
                state: text("State").unwrap_or_default(),
                not_before_unix: event_time_unix(&not_before),
                not_before,
                raw,
            })
        })
        .collect()
}

fn rfc3339_unix(text: &str) -> Option<u64> {
    humantime::parse_rfc3339_weak(text)
        .ok()?
        .duration_since(UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

/// A maintenance time as IMDS writes it, `21 Jan 2019 09:00:43 GMT`, in Unix seconds.
pub fn event_time_unix(text: &str) -> Option<u64> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let mut parts = text.split_whitespace();
    let day: u64 = parts.next()?.parse().ok()?;
    let month = parts.next()?;
    let month = MONTHS.iter().position(|m| *m == month)? as u64 + 1;
    let year: u64 = parts.next()?.parse().ok()?;
    let mut clock = parts.next()?.split(':').map(|p| p.parse::<u64>().ok());
    let (h, m, s) = (clock.next()??, clock.next()??, clock.next()??);
    if !matches!(parts.next(), Some("GMT" | "UTC")) || parts.next().is_some() {
        return None;
    }
    if !(1..=31).contains(&day) || year < 1970 || h > 23 || m > 59 || s > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm), March-based years.
    let (y, mo) = match month {
        1 | 2 => (year - 1, month + 9),
        _ => (year, month - 3),
    };
    let era = y / 400;
    let yoe = y % 400;
    let doy = (153 * mo + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + m * 60 + s)
}

/// Unix seconds as RFC 3339 (`BOOTSTAGE_DRAIN_DEADLINE`).
pub fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

/// Now, in Unix seconds.
pub fn unix(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: u64 = 1_800_000_000;

    fn config() -> DrainConfig {
        DrainConfig {
            stop: vec!["myapp.service".into()],
            within: Duration::from_secs(300),
            spot_margin: Duration::from_secs(10),
            rebalance_undo_after: Duration::from_secs(600),
        }
    }

    fn event(id: &str, code: &str, state: &str, not_before_unix: Option<u64>) -> Event {
        Event {
            id: id.into(),
            code: code.into(),
            state: state.into(),
            not_before: "21 Jan 2027 09:00:43 GMT".into(),
            not_before_unix,
            raw: json!({"EventId": id, "Code": code, "State": state}),
        }
    }

    fn look(target: Option<&str>) -> Look {
        Look {
            target: target.map(str::to_string),
            ..Look::default()
        }
    }

    fn spot_at(at: u64) -> Spot {
        Spot {
            action: "terminate".into(),
            time: rfc3339(at),
            time_unix: Some(at),
        }
    }

    /// The kinds of the acts, with their key facts, for short expectations.
    fn said(acts: &[Act]) -> Vec<String> {
        acts.iter()
            .map(|a| match a {
                Act::Maintenance(e) => format!("maintenance {}", e.id),
                Act::Rebalance {
                    notice,
                    hooks,
                    undo_due,
                } => format!("rebalance {notice} hooks={hooks} undo+{}", undo_due - NOW),
                Act::Undo => "undo".into(),
                Act::Drain(p) => format!(
                    "drain {} deadline+{} ({}){}",
                    p.reason.name(),
                    p.deadline_unix as i64 - NOW as i64,
                    p.why,
                    p.approve
                        .as_deref()
                        .map(|id| format!(" then approve {id}"))
                        .unwrap_or_default()
                ),
                Act::Approve(e) => format!("approve {}", e.id),
            })
            .collect()
    }

    /// An Azure scheduled event as the emulator and Azure serve it.
    fn azure(id: &str, kind: &str, status: &str, vms: &[&str], not_before: &str) -> ScheduledEvent {
        ScheduledEvent {
            id: id.into(),
            kind: kind.into(),
            status: status.into(),
            resources: vms.iter().map(|v| v.to_string()).collect(),
            not_before: not_before.into(),
            source: "Platform".into(),
            raw: json!({"EventId": id, "EventType": kind, "EventStatus": status,
                        "Resources": vms, "NotBefore": not_before,
                        "Description": "Host server is undergoing maintenance."}),
        }
    }

    #[test]
    fn azure_scheduled_events_decide_as_the_other_clouds_notices_do() {
        // NOW + 120 s, as Azure writes it.
        let in_2_min = "Fri, 15 Jan 2027 08:02:00 GMT";
        assert_eq!(rfc1123_unix(in_2_min), Some(NOW + 120));
        let mine = |events: &[ScheduledEvent]| Look {
            scheduled: azure_events(events, "web-1"),
            ..Look::default()
        };
        // Runs started (`done`) and not `busy` have ended.
        let memory = |done: &[&str], approved: &[&str], busy: &[&str]| Memory {
            maintenance_done: done.iter().map(|d| d.to_string()).collect(),
            maintenance_ran: done
                .iter()
                .filter(|d| !busy.contains(d))
                .map(|d| d.to_string())
                .collect(),
            approved: approved.iter().map(|d| d.to_string()).collect(),
            busy: busy.iter().map(|d| d.to_string()).collect(),
            ..Memory::default()
        };
        let cases: Vec<(&str, Memory, Look, DrainConfig, Vec<&str>)> = vec![
            (
                "a Preempt for this VM: drain, preempted, NotBefore less the margin, then approve",
                memory(&[], &[], &[]),
                mine(&[azure("p1", "Preempt", "Scheduled", &["web-1"], in_2_min)]),
                config(),
                vec![
                    "drain preempted deadline+110 (scheduled event Preempt p1 not before Fri, 15 Jan 2027 08:02:00 GMT) then approve p1",
                ],
            ),
            (
                "the name in another case is this VM's (Azure's names are case-insensitive)",
                memory(&[], &[], &[]),
                mine(&[azure("p1", "Preempt", "Scheduled", &["Web-1"], in_2_min)]),
                DrainConfig {
                    within: Duration::from_secs(60),
                    ..config()
                },
                vec![
                    "drain preempted deadline+60 (scheduled event Preempt p1 not before Fri, 15 Jan 2027 08:02:00 GMT) then approve p1",
                ],
            ),
            (
                "a Preempt already started: the documented 30 s, nothing to approve",
                memory(&[], &[], &[]),
                mine(&[azure("p2", "Preempt", "Started", &["web-1"], "")]),
                config(),
                vec!["drain preempted deadline+20 (scheduled event Preempt p2 Started)"],
            ),
            (
                "a Terminate: scale-in",
                memory(&[], &[], &[]),
                mine(&[azure("t1", "Terminate", "Scheduled", &["web-1"], in_2_min)]),
                config(),
                vec![
                    "drain scale-in deadline+110 (scheduled event Terminate t1 not before Fri, 15 Jan 2027 08:02:00 GMT) then approve t1",
                ],
            ),
            (
                "a Terminate whose NotBefore does not read: the documented 5 min, within first",
                memory(&[], &[], &[]),
                mine(&[azure("t2", "Terminate", "Scheduled", &["web-1"], "soon")]),
                config(),
                vec![
                    "drain scale-in deadline+290 (scheduled event Terminate t2 not before soon) then approve t2",
                ],
            ),
            (
                "events for other VMs of the set: nothing",
                memory(&[], &[], &[]),
                mine(&[
                    azure("p3", "Preempt", "Scheduled", &["web-2"], in_2_min),
                    azure("r1", "Reboot", "Scheduled", &["web-10", "web-"], in_2_min),
                ]),
                config(),
                vec![],
            ),
            (
                "one drain per life on Azure too",
                Memory {
                    draining: true,
                    ..Memory::default()
                },
                mine(&[azure("p1", "Preempt", "Scheduled", &["web-1"], in_2_min)]),
                config(),
                vec![],
            ),
            (
                "a Reboot, a Redeploy, a Freeze: maintenance.d for each",
                memory(&[], &[], &[]),
                mine(&[
                    azure("r1", "Reboot", "Scheduled", &["web-1", "web-2"], in_2_min),
                    azure("d1", "Redeploy", "Scheduled", &["web-1"], in_2_min),
                    azure("f1", "Freeze", "Started", &["web-1"], ""),
                ]),
                config(),
                vec!["maintenance r1", "maintenance d1", "maintenance f1"],
            ),
            (
                "hooks still running: no approval yet",
                memory(&["r1"], &[], &["r1"]),
                mine(&[azure("r1", "Reboot", "Scheduled", &["web-1"], in_2_min)]),
                config(),
                vec![],
            ),
            (
                "hooks over, an event naming another VM too: not approved (it would let Azure go ahead for both)",
                memory(&["r2"], &[], &[]),
                mine(&[azure(
                    "r2",
                    "Reboot",
                    "Scheduled",
                    &["web-1", "web-2"],
                    in_2_min,
                )]),
                config(),
                vec![],
            ),
            (
                "a Preempt naming another VM too: drain, not approved",
                memory(&[], &[], &[]),
                mine(&[azure(
                    "p4",
                    "Preempt",
                    "Scheduled",
                    &["web-2", "web-1"],
                    in_2_min,
                )]),
                config(),
                vec![
                    "drain preempted deadline+110 (scheduled event Preempt p4 not before Fri, 15 Jan 2027 08:02:00 GMT)",
                ],
            ),
            (
                "a run begun before the watcher restarted, never ended: not approved",
                Memory {
                    maintenance_done: vec!["r1".into()],
                    ..Memory::default()
                },
                mine(&[azure("r1", "Reboot", "Scheduled", &["web-1"], in_2_min)]),
                config(),
                vec![],
            ),
            (
                "hooks over: approved, once",
                memory(&["r1", "f1"], &[], &[]),
                mine(&[
                    azure("r1", "Reboot", "Scheduled", &["web-1"], in_2_min),
                    azure("f1", "Freeze", "Scheduled", &["web-1"], in_2_min),
                ]),
                config(),
                vec!["approve r1", "approve f1"],
            ),
            (
                "approved before (a restarted watcher): nothing",
                memory(&["r1"], &["r1"], &[]),
                mine(&[azure("r1", "Reboot", "Scheduled", &["web-1"], in_2_min)]),
                config(),
                vec![],
            ),
            (
                "started: under way, nothing to approve",
                memory(&["r1"], &[], &[]),
                mine(&[azure("r1", "Reboot", "Started", &["web-1"], "")]),
                config(),
                vec![],
            ),
            (
                "a type Microsoft does not document: its hooks, never approved",
                memory(&["x1"], &[], &[]),
                mine(&[
                    azure("x1", "Hibernate", "Scheduled", &["web-1"], in_2_min),
                    azure("x2", "Hibernate", "Scheduled", &["web-1"], in_2_min),
                ]),
                config(),
                vec!["maintenance x2"],
            ),
        ];
        for (name, memory, seen, drain, expected) in cases {
            assert_eq!(said(&next(&memory, &seen, NOW, &drain)), expected, "{name}");
        }
        let env = event_env(
            &azure_events(
                &[azure("r1", "Reboot", "Scheduled", &["web-1"], in_2_min)],
                "web-1",
            )[0],
        );
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("BOOTSTAGE_MAINTENANCE_EVENT_ID"), Some("r1"));
        assert_eq!(get("BOOTSTAGE_MAINTENANCE_CODE"), Some("Reboot"));
        assert_eq!(get("BOOTSTAGE_MAINTENANCE_STATE"), Some("Scheduled"));
        assert_eq!(get("BOOTSTAGE_MAINTENANCE_NOT_BEFORE"), Some(in_2_min));
        assert_eq!(
            get("BOOTSTAGE_MAINTENANCE_DESCRIPTION"),
            Some("Host server is undergoing maintenance.")
        );
        for (text, unix) in [
            ("Mon, 19 Sep 2016 18:29:47 GMT", Some(1_474_309_787)),
            ("19 Sep 2016 18:29:47 GMT", None),
            ("Foo, 19 Sep 2016 18:29:47 GMT", None),
            ("", None),
        ] {
            assert_eq!(rfc1123_unix(text), unix, "{text}");
        }
    }

    #[test]
    fn each_look_decides_drains_rebalances_and_maintenance() {
        let fresh = Memory::default();
        let draining = Memory {
            draining: true,
            ..Memory::default()
        };
        let episode = Memory {
            rebalance_seen: vec!["t1".into()],
            undo_due: Some(NOW + 5),
            ..Memory::default()
        };
        let handled = Memory {
            maintenance_done: vec!["instance-event-1".into()],
            rebalance_seen: vec!["t1".into()],
            ..Memory::default()
        };
        let with = |f: &dyn Fn(&mut Look)| {
            let mut l = look(Some("InService"));
            f(&mut l);
            l
        };
        let spot_120 = format!(
            "drain spot deadline+110 (Spot instance-action terminate at {})",
            rfc3339(NOW + 120)
        );
        let spot_3600 = format!(
            "drain spot deadline+300 (Spot instance-action terminate at {})",
            rfc3339(NOW + 3600)
        );
        let spot_5 = format!(
            "drain spot deadline+1 (Spot instance-action terminate at {})",
            rfc3339(NOW + 5)
        );
        let cases: Vec<(&str, Memory, Look, Vec<&str>)> = vec![
            ("nothing to see", fresh.clone(), look(None), vec![]),
            ("in service", fresh.clone(), look(Some("InService")), vec![]),
            (
                "scale-in",
                fresh.clone(),
                look(Some("Terminated")),
                vec!["drain scale-in deadline+300 (target lifecycle state Terminated)"],
            ),
            (
                "a warm instance terminated drains too",
                fresh.clone(),
                look(Some("Warmed:Terminated")),
                vec!["drain scale-in deadline+300 (target lifecycle state Warmed:Terminated)"],
            ),
            (
                "one drain per life: never again, whatever is seen",
                draining.clone(),
                with(&|l| {
                    l.target = Some("Terminated".into());
                    l.spot = Some(spot_at(NOW + 120));
                    l.rebalance = Some("t9".into());
                }),
                vec![],
            ),
            (
                "spot: the notice's time less the margin, sooner than within",
                fresh.clone(),
                with(&|l| l.spot = Some(spot_at(NOW + 120))),
                vec![&spot_120],
            ),
            (
                "spot far ahead: within",
                fresh.clone(),
                with(&|l| l.spot = Some(spot_at(NOW + 3600))),
                vec![&spot_3600],
            ),
            (
                "spot already due: a second, not a past deadline",
                fresh.clone(),
                with(&|l| l.spot = Some(spot_at(NOW + 5))),
                vec![&spot_5],
            ),
            (
                "scale-in wins over spot, and the drain is all that is done",
                fresh.clone(),
                with(&|l| {
                    l.target = Some("Terminated".into());
                    l.spot = Some(spot_at(NOW + 120));
                    l.rebalance = Some("t1".into());
                    l.maintenance =
                        vec![event("instance-event-1", "system-reboot", "active", None)];
                }),
                vec!["drain scale-in deadline+300 (target lifecycle state Terminated)"],
            ),
            (
                "a new recommendation opens an episode",
                fresh.clone(),
                with(&|l| l.rebalance = Some("t1".into())),
                vec!["rebalance t1 hooks=true undo+601"],
            ),
            (
                "the same recommendation again: nothing, the undo not yet due",
                episode.clone(),
                with(&|l| l.rebalance = Some("t1".into())),
                vec![],
            ),
            (
                "another recommendation in the episode: no hooks, the undo pushed back",
                episode.clone(),
                with(&|l| l.rebalance = Some("t2".into())),
                vec!["rebalance t2 hooks=false undo+601"],
            ),
            (
                "the undo when due",
                Memory {
                    undo_due: Some(NOW),
                    ..episode.clone()
                },
                with(&|l| l.rebalance = Some("t1".into())),
                vec!["undo"],
            ),
            (
                "an interruption in the episode: the drain, no undo",
                Memory {
                    undo_due: Some(NOW),
                    ..episode.clone()
                },
                with(&|l| l.spot = Some(spot_at(NOW + 120))),
                vec![&spot_120],
            ),
            (
                "after an undo, a new recommendation is a new episode",
                handled.clone(),
                with(&|l| l.rebalance = Some("t2".into())),
                vec!["rebalance t2 hooks=true undo+601"],
            ),
            (
                "maintenance: once per EventId, active ones only",
                handled.clone(),
                with(&|l| {
                    l.maintenance = vec![
                        event("instance-event-1", "system-reboot", "active", None),
                        event("instance-event-2", "system-maintenance", "active", None),
                        event("instance-event-2", "system-maintenance", "active", None),
                        event("instance-event-3", "instance-reboot", "canceled", None),
                        event("instance-event-4", "instance-reboot", "", None),
                    ]
                }),
                vec![
                    "maintenance instance-event-2",
                    "maintenance instance-event-4",
                ],
            ),
            (
                "a retirement far ahead: its hooks now, the drain later",
                fresh.clone(),
                with(&|l| {
                    l.maintenance = vec![event(
                        "instance-event-5",
                        "instance-retirement",
                        "active",
                        Some(NOW + 86_400),
                    )]
                }),
                vec!["maintenance instance-event-5"],
            ),
            (
                "a retirement whose time to drain has come: within and the margin fit before it",
                Memory {
                    maintenance_done: vec!["instance-event-5".into()],
                    ..fresh.clone()
                },
                with(&|l| {
                    l.maintenance = vec![event(
                        "instance-event-5",
                        "instance-retirement",
                        "active",
                        Some(NOW + 310),
                    )]
                }),
                vec![
                    "drain maintenance deadline+300 (maintenance instance-retirement instance-event-5 not before 21 Jan 2027 09:00:43 GMT)",
                ],
            ),
            (
                "a stop one second too far: not yet",
                fresh.clone(),
                with(&|l| {
                    l.maintenance = vec![event(
                        "instance-event-6",
                        "instance-stop",
                        "active",
                        Some(NOW + 311),
                    )]
                }),
                vec!["maintenance instance-event-6"],
            ),
            (
                "a reboot never drains",
                fresh.clone(),
                with(&|l| {
                    l.maintenance = vec![event(
                        "instance-event-7",
                        "system-reboot",
                        "active",
                        Some(NOW),
                    )]
                }),
                vec!["maintenance instance-event-7"],
            ),
            (
                "warm: recommendations and events wait for service",
                fresh.clone(),
                Look {
                    target: Some("Warmed:Running".into()),
                    rebalance: Some("t1".into()),
                    maintenance: vec![event("instance-event-1", "system-reboot", "active", None)],
                    ..Look::default()
                },
                vec![],
            ),
            (
                "warm: a Spot interruption still drains",
                fresh.clone(),
                Look {
                    target: Some("Warmed:Stopped".into()),
                    spot: Some(spot_at(NOW + 120)),
                    ..Look::default()
                },
                vec![&spot_120],
            ),
        ];
        for (name, memory, seen, expected) in cases {
            assert_eq!(
                said(&next(&memory, &seen, NOW, &config())),
                expected,
                "{name}"
            );
        }
    }

    #[test]
    fn gcp_preemption_and_host_maintenance_decide_as_aws_notices_do() {
        let host = |value: &str, etag: Option<&str>| Look {
            host_maintenance: Some(HostMaintenance {
                value: value.into(),
                etag: etag.map(str::to_string),
            }),
            ..Look::default()
        };
        let preempted = Look {
            preempted: true,
            ..Look::default()
        };
        let before = |value: Option<&str>, done: &[&str]| Memory {
            host_before: value.map(str::to_string),
            maintenance_done: done.iter().map(|d| d.to_string()).collect(),
            ..Memory::default()
        };
        let migrate_e1 = "gcp:MIGRATE_ON_HOST_MAINTENANCE:e1";
        let cases: Vec<(&str, Memory, Look, DrainConfig, Vec<&str>)> = vec![
            (
                "preempted: 30 s of notice less the margin",
                before(None, &[]),
                preempted.clone(),
                config(),
                vec!["drain preempted deadline+20 (instance/preempted TRUE)"],
            ),
            (
                "preempted with a shorter within: within",
                before(None, &[]),
                preempted.clone(),
                DrainConfig {
                    within: Duration::from_secs(5),
                    ..config()
                },
                vec!["drain preempted deadline+5 (instance/preempted TRUE)"],
            ),
            (
                "preempted with a margin past the notice: a second",
                before(None, &[]),
                preempted.clone(),
                DrainConfig {
                    spot_margin: Duration::from_secs(40),
                    ..config()
                },
                vec!["drain preempted deadline+1 (instance/preempted TRUE)"],
            ),
            (
                "host termination: 60 s of notice less the margin",
                before(Some("NONE"), &[]),
                host("TERMINATE_ON_HOST_MAINTENANCE", Some("e2")),
                config(),
                vec![
                    "drain maintenance deadline+50 (instance/maintenance-event TERMINATE_ON_HOST_MAINTENANCE)",
                ],
            ),
            (
                "preempted and a migration: the drain alone",
                before(None, &[]),
                Look {
                    preempted: true,
                    ..host("MIGRATE_ON_HOST_MAINTENANCE", Some("e1"))
                },
                config(),
                vec!["drain preempted deadline+20 (instance/preempted TRUE)"],
            ),
            (
                "one drain per life on GCP too",
                Memory {
                    draining: true,
                    ..Memory::default()
                },
                Look {
                    preempted: true,
                    ..host("TERMINATE_ON_HOST_MAINTENANCE", Some("e2"))
                },
                config(),
                vec![],
            ),
            (
                "a migration: maintenance.d, its id the value and the ETag",
                before(Some("NONE"), &[]),
                host("MIGRATE_ON_HOST_MAINTENANCE", Some("e1")),
                config(),
                vec!["maintenance gcp:MIGRATE_ON_HOST_MAINTENANCE:e1"],
            ),
            (
                "a migration seen first by a watcher just started",
                before(None, &[]),
                host("MIGRATE_ON_HOST_MAINTENANCE", Some("e1")),
                config(),
                vec!["maintenance gcp:MIGRATE_ON_HOST_MAINTENANCE:e1"],
            ),
            (
                "the same migration at the next look: nothing",
                before(Some("MIGRATE_ON_HOST_MAINTENANCE"), &[migrate_e1]),
                host("MIGRATE_ON_HOST_MAINTENANCE", Some("e1")),
                config(),
                vec![],
            ),
            (
                "a restarted watcher finding the migration it acted on: nothing",
                before(None, &[migrate_e1]),
                host("MIGRATE_ON_HOST_MAINTENANCE", Some("e1")),
                config(),
                vec![],
            ),
            (
                "a new migration after NONE, the server repeating the ETag: again",
                before(Some("NONE"), &[migrate_e1]),
                host("MIGRATE_ON_HOST_MAINTENANCE", Some("e1")),
                config(),
                vec!["maintenance gcp:MIGRATE_ON_HOST_MAINTENANCE:e1"],
            ),
            (
                "a migration answered without an ETag",
                before(Some("NONE"), &[]),
                host("MIGRATE_ON_HOST_MAINTENANCE", None),
                config(),
                vec!["maintenance gcp:MIGRATE_ON_HOST_MAINTENANCE"],
            ),
            (
                "NONE: nothing",
                before(None, &[]),
                host("NONE", Some("e0")),
                config(),
                vec![],
            ),
            (
                "a value Google does not document: nothing",
                before(Some("NONE"), &[]),
                host("SOMETHING_NEW", Some("e9")),
                config(),
                vec![],
            ),
        ];
        for (name, memory, seen, drain, expected) in cases {
            assert_eq!(said(&next(&memory, &seen, NOW, &drain)), expected, "{name}");
        }
        let env = event_env(
            &HostMaintenance {
                value: HOST_MIGRATE.into(),
                etag: Some("e1".into()),
            }
            .event(),
        );
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("BOOTSTAGE_MAINTENANCE_EVENT_ID"), Some(migrate_e1));
        assert_eq!(
            get("BOOTSTAGE_MAINTENANCE_CODE"),
            Some("MIGRATE_ON_HOST_MAINTENANCE")
        );
        assert_eq!(get("BOOTSTAGE_MAINTENANCE_STATE"), Some("active"));
        assert_eq!(
            get("BOOTSTAGE_MAINTENANCE_EVENT"),
            Some(
                r#"{"EventId":"gcp:MIGRATE_ON_HOST_MAINTENANCE:e1","Code":"MIGRATE_ON_HOST_MAINTENANCE","Source":"instance/maintenance-event"}"#
            )
        );
    }

    #[test]
    fn the_termination_action_is_completed_only_while_it_waits_and_after_the_drain() {
        let nothing = |s: &str| {
            Leave::Done(format!(
                "the group has the instance {s}: nothing waits for us"
            ))
        };
        let cases = [
            (Some("InService"), false, false, Leave::Wait),
            (Some("InService"), true, false, Leave::Wait),
            (Some("Terminating"), true, false, Leave::Wait),
            (Some("Terminating:Wait"), false, false, Leave::Wait),
            (Some("Terminating:Wait"), false, true, Leave::Wait),
            (Some("Terminating:Wait"), true, false, Leave::Complete),
            (Some("Warmed:Terminating:Wait"), true, true, Leave::Complete),
            (Some("Terminating:Proceed"), true, false, nothing("Terminating:Proceed")),
            (Some("Warmed:Terminated"), false, false, nothing("Warmed:Terminated")),
            (
                None,
                true,
                false,
                Leave::Done("the group no longer lists the instance".into()),
            ),
            (
                Some("InService"),
                true,
                true,
                Leave::GiveUp(
                    "the group still has the instance InService at the drain's deadline: no termination action waits"
                        .into(),
                ),
            ),
        ];
        for (state, drained, past, expected) in cases {
            assert_eq!(
                leaving(state, drained, past),
                expected,
                "{state:?} drained={drained} past={past}"
            );
        }
        assert!(waiting(Some("Warmed:Terminating:Wait")));
        assert!(!waiting(Some("Terminating")));
    }

    #[test]
    fn what_imds_serves_reads() {
        assert_eq!(
            spot(r#"{"action": "stop", "time": "2017-09-18T08:22:00Z"}"#),
            Some(Spot {
                action: "stop".into(),
                time: "2017-09-18T08:22:00Z".into(),
                time_unix: Some(1_505_722_920),
            })
        );
        assert_eq!(spot("not json"), None);
        assert_eq!(spot(r#"{"time": "2017-09-18T08:22:00Z"}"#), None);
        assert_eq!(
            rebalance(r#"{"noticeTime": "2020-10-27T08:22:00Z"}"#).as_deref(),
            Some("2020-10-27T08:22:00Z")
        );
        assert_eq!(rebalance("{}"), None);
        let events = maintenance(
            r#"[{"Code": "system-reboot", "Description": "scheduled reboot", "EventId": "instance-event-0d59937288b749b32",
                 "NotBefore": "21 Jan 2019 09:00:43 GMT", "NotAfter": "21 Jan 2019 09:17:23 GMT",
                 "NotBeforeDeadline": "10 Feb 2019 09:00:43 GMT", "State": "active"},
                {"Code": "no id"}]"#,
        );
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].id, "instance-event-0d59937288b749b32");
        assert_eq!(events[0].not_before_unix, Some(1_548_061_243));
        let env = event_env(&events[0]);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("BOOTSTAGE_MAINTENANCE_CODE"), Some("system-reboot"));
        assert_eq!(
            get("BOOTSTAGE_MAINTENANCE_NOT_AFTER"),
            Some("21 Jan 2019 09:17:23 GMT")
        );
        assert!(
            get("BOOTSTAGE_MAINTENANCE_EVENT")
                .unwrap()
                .contains("\"EventId\"")
        );
        assert_eq!(maintenance("[]"), vec![]);
        assert_eq!(maintenance("{}"), vec![]);
        for (text, unix) in [
            ("1 Jan 1970 00:00:00 GMT", Some(0)),
            ("29 Feb 2024 23:59:59 GMT", Some(1_709_251_199)),
            ("6 Dec 2026 08:22:00 GMT", Some(1_796_545_320)),
            ("21 Jan 2019 09:00:43", None),
            ("21 Foo 2019 09:00:43 GMT", None),
            ("21 Jan 2019 9:00 GMT", None),
            ("2019-01-21T09:00:43Z", None),
        ] {
            assert_eq!(event_time_unix(text), unix, "{text}");
        }
        assert_eq!(rfc3339(1_505_722_920), "2017-09-18T08:22:00Z");
    }
}
