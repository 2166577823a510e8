//! The termination action, beside the drain and after it (`drain.rs` drives it): the
//! group asked where it has the instance, the termination hook found once, heartbeated
//! while it waits in `Terminating:Wait`, and completed with one CONTINUE, recorded in
//! `lifecycle/record.json` (`life::leaving` decides when). Off EC2 nothing is asked.

use std::time::{Duration, SystemTime};

use super::life;
use super::{FALLBACK_HEARTBEAT, SIGNAL_TIMEOUT, cloud, connect, now, signal};
use crate::base::retry::Deadline;
use crate::base::stop::Stop;
use crate::imds::provider::Provider;
use crate::orchestrator::{Config, Delivery, LaunchHook};
use crate::state::StateDir;
use crate::state::lifecycle;

/// How often the group is asked where it has the instance while it leaves.
const GROUP_LOOK: Duration = Duration::from_secs(5);

/// The termination action: found, heartbeated while it waits, completed once.
pub(super) struct Leaving {
    /// The termination hook's name, when the settings name one.
    name: Option<String>,
    config: Option<Config>,
    deadline_unix: u64,
    /// The hook, once the group is found; `None` inside: in no group.
    hook: Option<Option<LaunchHook>>,
    every: Duration,
    next_beat: tokio::time::Instant,
    said: std::collections::BTreeSet<String>,
}

impl Leaving {
    /// Off EC2 there is no group: no termination hook is looked for.
    pub(super) fn new(state: &StateDir, config: Option<&Config>, deadline_unix: u64) -> Leaving {
        Leaving {
            name: config
                .and_then(|c| c.asg.as_ref())
                .and_then(|a| a.termination_hook.clone())
                .filter(|_| cloud(state) == Provider::Aws),
            config: config.cloned(),
            deadline_unix,
            hook: None,
            every: FALLBACK_HEARTBEAT,
            next_beat: tokio::time::Instant::now(),
            said: Default::default(),
        }
    }

    /// Logs `what` once (a failure repeated every look is said the first time).
    fn once(&mut self, what: String) {
        if self.said.insert(what.clone()) {
            tracing::warn!("{what}");
        }
    }

    /// The termination hook, found on first use; `None` when there is none to complete.
    async fn hook(&mut self, state: &StateDir) -> Option<LaunchHook> {
        let name = self.name.clone()?;
        if self.hook.is_none() {
            let config = self.config.clone()?;
            match connect(state, config, Deadline::after(SIGNAL_TIMEOUT)).await {
                Ok(link) => {
                    let hook = link.hook.map(|h| h.other(&name));
                    if let Some(hook) = &hook {
                        match hook.heartbeat_timeout(Deadline::after(SIGNAL_TIMEOUT)).await {
                            Ok(t) => self.every = (t / 3).max(Duration::from_secs(1)),
                            Err(e) => self.once(format!(
                                "the termination hook's heartbeat timeout is unknown ({e}); heartbeating every {FALLBACK_HEARTBEAT:?}"
                            )),
                        }
                    }
                    self.hook = Some(hook);
                }
                Err(e) => {
                    self.once(format!("cannot reach the group yet: {e}"));
                    return None;
                }
            }
        }
        self.hook.clone().flatten()
    }

    /// One look at the group: a heartbeat when the action waits and one is due; with
    /// `drained`, the completion when it waits. Returns whether there is nothing more to do.
    pub(super) async fn look(&mut self, state: &StateDir, drained: bool) -> bool {
        let past = life::unix(SystemTime::now()) >= self.deadline_unix;
        if self.name.is_none() {
            return true;
        }
        let Some(hook) = self.hook(state).await else {
            // In no group (nothing to complete), or the group is not reachable yet.
            return matches!(self.hook, Some(None)) || (drained && past);
        };
        let group_state = match hook.lifecycle_state(Deadline::after(GROUP_LOOK * 2)).await {
            Ok(s) => s,
            Err(e) => {
                self.once(format!(
                    "cannot ask the group where it has the instance: {e}"
                ));
                return drained && past;
            }
        };
        match life::leaving(group_state.as_deref(), drained, past) {
            life::Leave::Complete => self.complete(state, &hook, past).await,
            life::Leave::Done(why) => {
                tracing::info!("the termination action: {why}");
                true
            }
            life::Leave::GiveUp(why) => {
                tracing::error!("the termination action: {why}; not completed");
                true
            }
            life::Leave::Wait if life::waiting(group_state.as_deref()) => {
                if tokio::time::Instant::now() >= self.next_beat {
                    self.next_beat = tokio::time::Instant::now() + self.every;
                    match hook.heartbeat(Deadline::after(SIGNAL_TIMEOUT)).await {
                        Ok(Delivery::Delivered) => {
                            let _ = lifecycle::update(state, |r| {
                                r.heartbeats += 1;
                                r.last_heartbeat_at = Some(now());
                            });
                        }
                        Ok(Delivery::NothingWaiting(_)) => {}
                        Err(e) => self.once(format!("termination heartbeat not delivered: {e}")),
                    }
                }
                false
            }
            life::Leave::Wait => false,
        }
    }

    /// CONTINUE, recorded. Returns whether it is settled (delivered, or nothing waited);
    /// one not delivered is tried again at the next look until past the deadline.
    async fn complete(&mut self, state: &StateDir, hook: &LaunchHook, past: bool) -> bool {
        let delivery = hook.complete(true, Deadline::after(SIGNAL_TIMEOUT)).await;
        let sent = signal(
            "CompleteLifecycleAction (termination)",
            "CONTINUE",
            &delivery,
        );
        let settled = sent.delivered;
        let _ = lifecycle::update(state, |r| {
            if !r.termination.as_ref().is_some_and(|s| s.taken()) {
                r.termination = Some(sent);
            }
        });
        settled || past
    }

    /// After the drain: looks at the group until the action is completed or there is
    /// nothing to complete, or SIGTERM.
    pub(super) async fn finish(&mut self, state: &StateDir, stop: &mut Stop) {
        loop {
            if self.look(state, true).await {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(self.between_looks()) => {}
                _ = stop.requested() => return,
            }
        }
    }

    /// Between two looks at the group: often enough for the heartbeats.
    pub(super) fn between_looks(&self) -> Duration {
        GROUP_LOOK.min(self.every)
    }
}
