//! The launch hook kept alive: `bootstage lifecycle watch`'s first part. The group's
//! launch hook found and its heartbeat timeout read ([`launch_hook`]); then, once a second
//! ([`look`]), the record read and what is due decided ([`next_step`], a pure function
//! with a table test): a heartbeat every third of the timeout, the final signal when the
//! boot's outcome is recorded (or sent again when it was not delivered), a hold kept alive
//! until `bootstage release` or its end, a failed boot abandoned after the grace. Never
//! past 48 h, the longest a lifecycle action lives; SIGTERM ends it at once.

use std::time::Duration;

use crate::base::notify::Notifier;
use crate::base::retry::Deadline;
use crate::base::stop::Stop;
use crate::orchestrator::{self, Delivery, LaunchHook, OrchestratorError};
use crate::stage::error::Result;
use crate::state::StateDir;
use crate::state::lifecycle::{self, Record};
use crate::state::status;

use super::{
    FALLBACK_HEARTBEAT, LOOK_EVERY, Link, RETRY_EVERY, SIGNAL_TIMEOUT, Settings, config, connect,
    finish, now, unix_now,
};

/// How the launch part of the watch ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Launch {
    /// Nothing (more) to keep alive.
    Over,
    /// SIGTERM or SIGINT: the whole watch ends.
    Stopped,
}

/// The launch hook's heartbeats (and a hold) until the action is complete.
pub(super) async fn keep_launch_alive(
    state: &StateDir,
    settings: &Settings,
    notifier: Notifier,
    stop: &mut Stop,
) -> Result<Launch> {
    let Some((link, every, ready_within)) = launch_hook(state, settings, &notifier).await? else {
        return Ok(Launch::Over);
    };
    // `launch_hook` answers only a link that has a hook.
    let Some(hook) = link.hook.as_ref() else {
        notifier.ready("in no auto scaling group: nothing to keep alive");
        return Ok(Launch::Over);
    };
    let mut beats = Beats::new(every);
    // No lifecycle action outlives 48 h, so no watch does either.
    while beats.started.elapsed() < orchestrator::MAX_GLOBAL_TIMEOUT {
        if let Some(ended) = look(
            state,
            settings,
            &link,
            hook,
            ready_within,
            &mut beats,
            &notifier,
        )
        .await?
        {
            return Ok(ended);
        }
        tokio::select! {
            _ = tokio::time::sleep(beats.wait()) => {}
            _ = stop.requested() => {
                tracing::info!("stopping the heartbeats");
                return Ok(Launch::Stopped);
            }
        }
    }
    tracing::warn!("no lifecycle action lasts longer than 48 h: the watch ends");
    Ok(Launch::Over)
}

/// The group's launch hook, reached, with how often to heartbeat it and how long the boot
/// has to be ready; `None` when there is none to keep alive (READY sent, saying why).
async fn launch_hook(
    state: &StateDir,
    settings: &Settings,
    notifier: &Notifier,
) -> Result<Option<(Link, Duration, Duration)>> {
    let Some(config) = config(state, &settings.config)? else {
        notifier.ready("no bootstage.lifecycle: nothing to keep alive");
        tracing::info!("no bootstage.lifecycle: nothing to keep alive");
        return Ok(None);
    };
    let Some(ready_within) = config
        .asg
        .as_ref()
        .filter(|a| a.hook.is_some())
        .map(|a| a.ready_within)
    else {
        notifier.ready("no auto scaling launch hook to keep alive");
        return Ok(None);
    };
    // For `status` and the ready notice: a hook configured with no watcher ever started
    // (the unit masked, or not installed) is worth a warning.
    lifecycle::update(state, |r| {
        r.watcher_started_at.get_or_insert_with(now);
    })?;
    // READY before the first call: bootstage.target waits for the units it wants, and
    // neither it nor the app may wait on Auto Scaling's answer.
    notifier.ready("looking up the group's lifecycle hook");
    let link = connect(state, config, Deadline::after(SIGNAL_TIMEOUT)).await?;
    let Some(hook) = link.hook.as_ref() else {
        notifier.ready("in no auto scaling group: nothing to keep alive");
        return Ok(None);
    };
    let every = match hook
        .heartbeat_timeout(Deadline::after(SIGNAL_TIMEOUT))
        .await
    {
        Ok(timeout) => (timeout / 3).max(Duration::from_secs(1)),
        // A hook that does not exist is a setting to fix, not a reason to heartbeat.
        Err(e @ OrchestratorError::Config(_)) => {
            let why = e.to_string();
            lifecycle::update(state, |r| r.heartbeat_error = Some(why))?;
            return Err(e.into());
        }
        Err(e) => {
            tracing::warn!(
                "the hook's heartbeat timeout is unknown ({e}); heartbeating every {FALLBACK_HEARTBEAT:?}"
            );
            FALLBACK_HEARTBEAT
        }
    };
    lifecycle::update(state, |r| {
        r.group = Some(hook.group.clone());
        r.hook = Some(hook.hook.clone());
    })?;
    tracing::info!(
        group = hook.group,
        hook = hook.hook,
        "keeping the launch hook alive: a heartbeat every {every:?}"
    );
    notifier.ready(&format!("heartbeating {} every {every:?}", hook.hook));
    Ok(Some((link, every, ready_within)))
}

/// The heartbeats' clock: when the watch started, the next heartbeat, the earliest a
/// final signal not delivered may be sent again, since when a stage's failure has been
/// written, and whether a hold was announced.
struct Beats {
    every: Duration,
    started: tokio::time::Instant,
    next: tokio::time::Instant,
    retry_final: tokio::time::Instant,
    failed_since: Option<tokio::time::Instant>,
    announced_hold: bool,
}

impl Beats {
    fn new(every: Duration) -> Beats {
        let started = tokio::time::Instant::now();
        Beats {
            every,
            started,
            next: started,
            retry_final: started,
            failed_since: None,
            announced_hold: false,
        }
    }

    /// Until the next heartbeat or retry of a final signal, at most [`LOOK_EVERY`].
    fn wait(&self) -> Duration {
        let now = tokio::time::Instant::now();
        self.next
            .min(self.retry_final.max(now))
            .saturating_duration_since(now)
            .min(LOOK_EVERY)
    }
}

/// One look: the record read, the step decided ([`next_step`]) and taken, a heartbeat
/// sent when due; `Some` when the launch part of the watch is over.
async fn look(
    state: &StateDir,
    settings: &Settings,
    link: &Link,
    hook: &LaunchHook,
    ready_within: Duration,
    beats: &mut Beats,
    notifier: &Notifier,
) -> Result<Option<Launch>> {
    let record = lifecycle::read(state).ok().flatten().unwrap_or_default();
    // A failed boot is never kept alive by accident: if the failure unit neither
    // abandoned nor held the instance (it could not reach AWS, or it never ran), the
    // watcher abandons it once the grace is over. Only a failure a stage wrote itself
    // counts: this unit cannot see the stages' processes.
    match status::failure_written(state) {
        true => {
            beats
                .failed_since
                .get_or_insert_with(tokio::time::Instant::now);
        }
        false => beats.failed_since = None,
    }
    let moment = Moment {
        unix: unix_now(),
        retry_final: tokio::time::Instant::now() >= beats.retry_final,
        failed_for: beats.failed_since.map_or(Duration::ZERO, |t| t.elapsed()),
        watched_for: beats.started.elapsed(),
    };
    let due = match next_step(&record, &moment, ready_within, settings.failure_grace) {
        Step::Complete(result) => {
            tracing::info!(
                result,
                "the lifecycle action is complete: nothing left to keep alive"
            );
            notifier.status(&format!("lifecycle action complete: {result}"));
            return Ok(Some(Launch::Over));
        }
        Step::Held(until) => {
            if !beats.announced_hold {
                beats.announced_hold = true;
                notifier.status(&format!(
                    "held for debugging until {until}: bootstage release --abandon ends it"
                ));
            }
            None
        }
        Step::Finish { proceed, why } => Some((proceed, why)),
        Step::Heartbeat => None,
    };
    if let Some((proceed, why)) = due {
        tracing::warn!("{why}");
        match finish(state, link, proceed).await {
            Ok(()) => return Ok(Some(Launch::Over)),
            // Recorded as not delivered: tried again while the heartbeats go on.
            Err(e) => {
                tracing::warn!("{e}");
                beats.retry_final = tokio::time::Instant::now() + beats.every.min(RETRY_EVERY);
            }
        }
    }
    if tokio::time::Instant::now() < beats.next {
        return Ok(None);
    }
    beats.next = tokio::time::Instant::now() + beats.every;
    match hook
        .heartbeat(Deadline::after(beats.every.min(SIGNAL_TIMEOUT)))
        .await
    {
        Ok(Delivery::Delivered) => {
            lifecycle::update(state, |r| {
                r.heartbeats += 1;
                r.last_heartbeat_at = Some(now());
                r.heartbeat_error = None;
            })?;
        }
        Ok(Delivery::NothingWaiting(why)) => {
            tracing::info!(
                "no lifecycle action is in progress ({why}): the hook was completed or timed out, or this boot is not a launch; nothing to keep alive"
            );
            return Ok(Some(Launch::Over));
        }
        Err(e) => {
            tracing::warn!("heartbeat not delivered: {e}");
            let why = e.to_string();
            lifecycle::update(state, |r| r.heartbeat_error = Some(why))?;
            // Sooner than a third of the timeout: two misses must not end it.
            beats.next = tokio::time::Instant::now() + beats.every.min(RETRY_EVERY);
        }
    }
    Ok(None)
}

/// What the watcher knows of time at one look: the wall clock, whether a final signal
/// that was not delivered may be sent again, how long a stage's failure has been written,
/// and how long the watch has run.
#[derive(Debug, Clone)]
struct Moment {
    unix: u64,
    retry_final: bool,
    failed_for: Duration,
    watched_for: Duration,
}

/// What the watcher does at one look, besides heartbeating.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    /// The action is complete (this result was delivered): nothing left to keep alive.
    Complete(String),
    /// Send the final signal now: CONTINUE (`proceed`) or ABANDON, and why.
    Finish { proceed: bool, why: String },
    /// Held for debugging until this time: keep heartbeating.
    Held(String),
    /// Keep heartbeating.
    Heartbeat,
}

/// The watcher's decision, from the record and the clock alone. In order: a delivered
/// final signal ends the watch; one not delivered is sent again when its retry is due; a
/// hold keeps the instance until its end, then abandons it; a failure written by a stage
/// that neither abandoned nor held the instance abandons it after `grace`; no completion
/// within `ready_within` abandons it.
fn next_step(record: &Record, now: &Moment, ready_within: Duration, grace: Duration) -> Step {
    match (&record.asg, &record.hold) {
        (Some(done), _) if done.delivered => Step::Complete(done.result.clone()),
        (Some(undelivered), _) if now.retry_final => Step::Finish {
            proceed: undelivered.result == "CONTINUE",
            why: format!("{} was not delivered: sending it again", undelivered.result),
        },
        (Some(_), _) => Step::Heartbeat,
        (None, Some(hold)) if now.unix >= hold.until_unix => Step::Finish {
            proceed: false,
            why: "the hold is over: abandoning the instance".into(),
        },
        (None, Some(hold)) => Step::Held(hold.until.clone()),
        (None, None) if now.failed_for >= grace => Step::Finish {
            proceed: false,
            why: format!(
                "a stage failed {grace:?} ago and the instance was neither abandoned nor held: abandoning it"
            ),
        },
        (None, None) if now.watched_for >= ready_within => Step::Finish {
            proceed: false,
            why: format!(
                "no completion within ready_within ({}): abandoning the instance",
                humantime::format_duration(ready_within)
            ),
        },
        (None, None) => Step::Heartbeat,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::lifecycle::{Hold, Signal};

    const HOUR: Duration = Duration::from_secs(3600);
    const GRACE: Duration = Duration::from_secs(120);

    fn signal(result: &str, delivered: bool) -> Signal {
        Signal {
            result: result.into(),
            at: "2026-12-06T00:00:00Z".into(),
            delivered,
            note: None,
        }
    }

    fn hold(until_unix: u64) -> Hold {
        Hold {
            reason: "bootstage-hooks.service failed".into(),
            since: "2026-12-06T00:00:00Z".into(),
            until: "2026-12-06T01:00:00Z".into(),
            until_unix,
            clamped: None,
        }
    }

    #[test]
    fn what_is_due_follows_the_record_and_the_clock() {
        let at = |unix, retry_final, failed_for, watched_for| Moment {
            unix,
            retry_final,
            failed_for: Duration::from_secs(failed_for),
            watched_for: Duration::from_secs(watched_for),
        };
        let record = |asg: Option<Signal>, hold: Option<Hold>| Record {
            asg,
            hold,
            ..Record::default()
        };
        let finish = |proceed, why: &str| Step::Finish {
            proceed,
            why: why.into(),
        };
        let cases = [
            // A delivered signal ends the watch, whatever else is true.
            (
                record(Some(signal("CONTINUE", true)), None),
                at(0, true, 999, 99_999),
                Step::Complete("CONTINUE".into()),
            ),
            (
                record(Some(signal("ABANDON", true)), Some(hold(0))),
                at(9, false, 0, 0),
                Step::Complete("ABANDON".into()),
            ),
            // Not delivered: sent again when its retry is due, heartbeats meanwhile.
            (
                record(Some(signal("CONTINUE", false)), None),
                at(0, true, 0, 0),
                finish(true, "CONTINUE was not delivered: sending it again"),
            ),
            (
                record(Some(signal("ABANDON", false)), None),
                at(0, true, 0, 0),
                finish(false, "ABANDON was not delivered: sending it again"),
            ),
            (
                record(Some(signal("CONTINUE", false)), None),
                at(0, false, 999, 99_999),
                Step::Heartbeat,
            ),
            // A hold keeps the instance until its end, failure or not.
            (
                record(None, Some(hold(100))),
                at(99, false, 999, 99_999),
                Step::Held("2026-12-06T01:00:00Z".into()),
            ),
            (
                record(None, Some(hold(100))),
                at(100, false, 0, 0),
                finish(false, "the hold is over: abandoning the instance"),
            ),
            // A failure nobody acted on: abandoned after the grace, not before.
            (record(None, None), at(0, false, 119, 0), Step::Heartbeat),
            (
                record(None, None),
                at(0, false, 120, 0),
                finish(
                    false,
                    "a stage failed 120s ago and the instance was neither abandoned nor held: abandoning it",
                ),
            ),
            // No completion within ready_within.
            (record(None, None), at(0, false, 0, 3599), Step::Heartbeat),
            (
                record(None, None),
                at(0, false, 0, 3600),
                finish(
                    false,
                    "no completion within ready_within (1h): abandoning the instance",
                ),
            ),
        ];
        for (record, moment, expected) in cases {
            assert_eq!(
                next_step(&record, &moment, HOUR, GRACE),
                expected,
                "{record:?} {moment:?}"
            );
        }
    }
}
