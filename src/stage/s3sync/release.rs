//! Releases: a sync entry's release pointer read on each pass (one `GetParameter`, or
//! one `GetParameters` for up to 10 pointers), and the new generations' health checks
//! (`gate`): after every destination's swap, `--on-change` once, then each entry's
//! `verify` command, bounded and retried; for each that fails, the previous generation
//! swapped back with one rename and marked (`tree::Record`), `--on-change` once more,
//! and a `release_failed` notice. A generation is `unverified` until its verify passes,
//! so one that a SIGTERM or a crash cut short is verified again by the next pass; the
//! hook and the notice are recorded owed until they ran (`tree::Record`), so the next
//! pass runs what a SIGTERM or a crash cut short, and a swap back cut short is completed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

use super::{Report, SyncError};
use crate::aws::{self, Aws, Kind};
use crate::base::child;
use crate::base::exit::ExitCode;
use crate::base::notify::Notifier;
use crate::base::retry::{self, Deadline};
use crate::settings::SyncSpec;
use crate::stage::notice::deliver;
use crate::state::StateDir;
use crate::sync::tree::{Destination, Made};

/// GetParameters takes at most this many names.
const BATCH: usize = 10;

/// The value of each release pointer `names` names, or why it has none.
pub(super) async fn values(
    aws: &Aws,
    names: &[&str],
    deadline: Deadline,
) -> BTreeMap<String, Result<String, SyncError>> {
    let client = aws.ssm(aws.region());
    let mut out = BTreeMap::new();
    for batch in names.chunks(BATCH) {
        let answered = match batch {
            [one] => {
                let action = "ssm:GetParameter";
                aws::call("SSM", action, retry::THROTTLED, deadline, || {
                    client.get_parameter().name(*one).send()
                })
                .await
                .map(|a| {
                    let value = a.parameter().and_then(|p| p.value()).map(str::to_string);
                    (vec![(one.to_string(), value)], Vec::new())
                })
                .map_err(|f| (action, f))
            }
            several => {
                let action = "ssm:GetParameters";
                let list: Vec<String> = several.iter().map(|n| n.to_string()).collect();
                aws::call("SSM", action, retry::THROTTLED, deadline, || {
                    client.get_parameters().set_names(Some(list.clone())).send()
                })
                .await
                .map(|a| {
                    let found = a
                        .parameters()
                        .iter()
                        .filter_map(|p| {
                            Some((p.name()?.to_string(), p.value().map(str::to_string)))
                        })
                        .collect();
                    (found, a.invalid_parameters().to_vec())
                })
                .map_err(|f| (action, f))
            }
        };
        match answered {
            Ok((found, invalid)) => {
                for name in batch {
                    let value = found
                        .iter()
                        .find(|(n, _)| n == name)
                        .and_then(|(_, v)| v.clone());
                    let got = match value {
                        Some(value) => Ok(value),
                        None => Err(missing(name, invalid.iter().any(|n| n == name))),
                    };
                    out.insert(name.to_string(), got);
                }
            }
            Err((action, f)) => {
                for name in batch {
                    let code = match f.kind {
                        _ if f.is(&["ParameterNotFound"]) => {
                            out.insert(name.to_string(), Err(missing(name, true)));
                            continue;
                        }
                        Kind::Refused => ExitCode::NoPerm,
                        Kind::Throttled | Kind::Transient => ExitCode::TempFail,
                        Kind::Permanent => ExitCode::BadUserData,
                    };
                    let why = format!("release pointer SSM parameter {name:?}: {action}: {f}");
                    out.insert(name.to_string(), Err(SyncError::Pointer(why, code)));
                }
            }
        }
    }
    out
}

fn missing(name: &str, invalid: bool) -> SyncError {
    let why = match invalid {
        true => "no such parameter",
        false => "SSM gave no value",
    };
    SyncError::Pointer(
        format!(
            "release pointer SSM parameter {name:?}: {why}; put the release's URL in it (aws ssm put-parameter --name {name} --value s3://BUCKET/KEY.tar.zst --overwrite)"
        ),
        ExitCode::NoInput,
    )
}

/// What a release's checks need beside the destination: the `--on-change` hook (watch
/// mode), the notice's settings, the hooks' limit, and systemd.
#[derive(Clone, Debug)]
pub(super) struct Hooks {
    pub on_change: Option<String>,
    pub state: StateDir,
    /// The image's notify settings, for a notice when the parameters have none.
    pub notify: PathBuf,
    pub limit: Duration,
    pub notifier: Notifier,
}

/// What a generation is, in a message and a notice.
fn described(made: Option<&Made>) -> serde_json::Value {
    match made {
        Some(m) => json!({
            "generation": m.name,
            "source": m.source,
            "version": m.version,
            "sha256": m.sha256,
            "time": m.time,
        }),
        None => serde_json::Value::Null,
    }
}

/// One destination after its pass: what the pass did, and the destination, still locked.
pub(super) type Swapped = Result<(Report, Destination), SyncError>;

/// What [`gate`] did.
pub(super) struct Gated {
    /// One per destination, in order.
    pub results: Vec<Result<Report, SyncError>>,
    /// `--on-change` ran (after RELOADING=1): the caller owes READY=1.
    pub hooked: bool,
    /// What the hooks it ran named: the caller runs the hook for what else changed only.
    pub named: Vec<String>,
}

/// What one destination needs after its pass.
enum Needs {
    /// Nothing: its result as it is.
    Done(Result<Report, SyncError>),
    /// A verify: of a generation swapped in by this pass, or of a current one a run left
    /// unverified (a SIGTERM or a crash during its verify).
    Verify,
}

/// After every destination's pass: the hooks owed, then the new generations' verifies.
/// `--on-change` runs once first, if anything is owed it (`also`, the parameters'
/// values; each destination whose record owes the hook: this run's swap or rollback, or
/// one of a run that ended before the hook returned), naming that and every destination
/// the pass swapped in, so the app serves the new trees; each mark goes once the hook
/// returned. Then every verify, at once; the destinations whose verify failed are swapped
/// back (the hook owed again, in the same record write as the `failed` mark) and
/// `--on-change` runs once more, naming them; then the `release_failed` notices owed
/// (each recorded with its `failed` mark, so a run that ended first leaves it for the
/// next). A current generation that a run left `unverified` is verified again. An
/// unchanged destination whose current generation failed its verify fails again (a
/// restart must not pass a release that failed), after the rollback from it is completed
/// if one was cut short (the mark is written before the rename back).
///
/// Each generation is recorded `unverified` when it is swapped in and stays so until its
/// verify passes: a SIGTERM ends a verify or a hook at once (the caller drops this
/// future, which kills its process group) and leaves the marks so, as a crash does.
pub(super) async fn gate(
    passes: Vec<Swapped>,
    specs: &[SyncSpec],
    hooks: &Hooks,
    also: &[String],
) -> Gated {
    let mut needs = Vec::new();
    let mut held = Vec::new();
    for (spec, pass) in specs.iter().zip(passes) {
        match pass {
            Err(e) => {
                needs.push(Needs::Done(Err(e)));
                held.push(None);
            }
            Ok((report, mut dest)) => {
                needs.push(judged(&mut dest, spec, &report));
                held.push(Some((report, dest)));
            }
        }
    }
    let mut hooked = false;
    let mut named = Vec::new();
    // The hook here, not after the pass: the app must serve the new trees before they
    // are checked.
    if let Some(hook) = &hooks.on_change {
        let owing: Vec<Option<Owing>> = held
            .iter()
            .map(|h| {
                h.as_ref().map(|(r, d)| Owing {
                    swapped: r.swapped,
                    owes: d.owes_hook(),
                })
            })
            .collect();
        if let Some(changed) = first_hook(also, specs, &owing) {
            hooks.notifier.reloading();
            run_hook(hook, &changed.join(":"), hooks.limit).await;
            hooked = true;
            named = changed;
            for (_, dest) in held.iter_mut().flatten() {
                dest.hook_paid();
            }
        }
    }
    let verdicts = verify_all(&needs, specs, &held).await;
    let (results, mut kept) = settled(needs, specs, held, verdicts);
    if let Some(hook) = &hooks.on_change {
        let back: Vec<String> = kept
            .iter()
            .filter(|(_, d)| d.owes_hook())
            .map(|(spec, _)| spec.to.display().to_string())
            .collect();
        if !back.is_empty() {
            if !hooked {
                hooks.notifier.reloading();
            }
            run_hook(hook, &back.join(":"), hooks.limit).await;
            hooked = true;
            named.extend(back);
            for (_, dest) in kept.iter_mut() {
                dest.hook_paid();
            }
        }
    }
    notices(&mut kept, hooks).await;
    Gated {
        results,
        hooked,
        named,
    }
}

/// A destination after its pass, as far as the change hook is concerned.
#[derive(Debug, Clone, Copy)]
struct Owing {
    /// The pass swapped a new generation in.
    swapped: bool,
    /// Its record owes the hook (this run's swap or rollback, or an earlier run's).
    owes: bool,
}

/// Whether `--on-change` runs before the verifies, and what it names: only when a
/// destination's record owes it, or `also` names something; then `also`, and each
/// destination (`owing`, one per spec, `None` for a failed pass) that swapped or is owed.
fn first_hook(also: &[String], specs: &[SyncSpec], owing: &[Option<Owing>]) -> Option<Vec<String>> {
    let owed = owing.iter().flatten().any(|o| o.owes);
    if !owed && also.is_empty() {
        return None;
    }
    let destinations = owing
        .iter()
        .zip(specs)
        .filter(|(o, _)| o.is_some_and(|o| o.swapped || o.owes))
        .map(|(_, spec)| spec.to.display().to_string());
    Some(also.iter().cloned().chain(destinations).collect())
}

/// Every verify a destination needs, at once; `None` for one that needs none.
async fn verify_all(
    needs: &[Needs],
    specs: &[SyncSpec],
    held: &[Option<(Report, Destination)>],
) -> Vec<Option<Result<(), String>>> {
    futures_util::future::join_all(needs.iter().zip(specs).zip(held).map(
        |((need, spec), held)| async move {
            let (Needs::Verify, Some(verify), Some((_, dest))) = (need, &spec.verify, held) else {
                return None;
            };
            let new = dest.current_made();
            Some(run_verify(verify, spec, new).await)
        },
    ))
    .await
}

/// The destinations still held after the verifies, each with its spec.
type Kept<'s> = Vec<(&'s SyncSpec, Destination)>;

/// Acts on each verdict (`settle`): one result per destination, in order, and the
/// destinations still held, for the hook and the notices owed.
fn settled(
    needs: Vec<Needs>,
    specs: &[SyncSpec],
    held: Vec<Option<(Report, Destination)>>,
    verdicts: Vec<Option<Result<(), String>>>,
) -> (Vec<Result<Report, SyncError>>, Kept<'_>) {
    let mut results = Vec::new();
    let mut kept = Vec::new();
    for (((need, spec), held), verdict) in needs.into_iter().zip(specs).zip(held).zip(verdicts) {
        match (held, verdict) {
            (Some((report, mut dest)), Some(verdict)) => {
                match settle(&mut dest, spec, verdict) {
                    None => results.push(Ok(report)),
                    Some(error) => results.push(Err(error)),
                }
                kept.push((spec, dest));
            }
            (held, _) => {
                kept.extend(held.map(|(_, dest)| (spec, dest)));
                results.push(match need {
                    Needs::Done(result) => result,
                    Needs::Verify => unreachable!("a verify has a destination"),
                });
            }
        }
    }
    (results, kept)
}

/// The `release_failed` notices owed, each mark gone once it was delivered (or failed to
/// be).
async fn notices(kept: &mut [(&SyncSpec, Destination)], hooks: &Hooks) {
    for (spec, dest) in kept.iter_mut() {
        let Some(failed) = dest.notice_owed().cloned() else {
            continue;
        };
        let running = dest.current_made().filter(|m| m.name != failed.name);
        let recorded = failed.failed.as_deref().unwrap_or_default();
        let why = recorded.split_once(": ").map_or(recorded, |(_, why)| why);
        let about = json!({
            "dest": spec.to.display().to_string(),
            "failed": described(Some(&failed)),
            "running": described(running),
            "why": why,
        });
        if let Err(e) =
            deliver::life(&hooks.state, &hooks.notify, "release_failed", about, None).await
        {
            tracing::warn!("the release_failed notice: {e}");
        }
        dest.notice_sent();
    }
}

/// What a destination needs after its pass, from its record: a verify, or nothing.
fn judged(dest: &mut Destination, spec: &SyncSpec, report: &Report) -> Needs {
    let current = dest.current_made().cloned();
    if spec.verify.is_none() {
        // A mark left by a run that ended between its swap and its record.
        if current.as_ref().is_some_and(|m| m.unverified.is_some()) {
            dest.mark_verified();
        }
        return Needs::Done(Ok(report.clone()));
    }
    match current {
        _ if report.swapped => Needs::Verify,
        Some(m) if m.unverified.is_some() => {
            tracing::info!(
                dest = %spec.to.display(),
                generation = m.name,
                "the current generation's verify did not finish (SIGTERM or a crash); verifying it again"
            );
            Needs::Verify
        }
        Some(m) if m.failed.is_some() => {
            let recorded = m.failed.as_deref().unwrap_or_default();
            let why = recorded
                .split_once(": ")
                .map_or(recorded, |(_, why)| why)
                .to_string();
            let dest_name = spec.to.display().to_string();
            // A rollback from it cut short (its mark is written before the rename back):
            // completed now, with its hook and notice owed.
            let has_previous =
                crate::sync::tree::rollback_target(dest.record(), dest.current_name(), None)
                    .is_ok();
            let running = match has_previous {
                false => None,
                true => match dest.roll_back(None, "verify", false, Some(&why)) {
                    Ok(back) => {
                        tracing::error!(
                            dest = dest_name,
                            failed = m.source,
                            running = back.source,
                            "the current generation failed its verify and the rollback from it was cut short; the previous one is swapped back now"
                        );
                        Some(back.source)
                    }
                    Err(e) => return Needs::Done(Err(e.into())),
                },
            };
            Needs::Done(Err(SyncError::Verify {
                dest: dest_name,
                failed: m.source,
                why,
                running,
            }))
        }
        _ => Needs::Done(Ok(report.clone())),
    }
}

/// Acts on a verify's verdict: a pass clears the mark; a failure swaps the previous
/// generation back (or marks the current one failed when there is none), recording the
/// hook (this run's) and the notice owed with the mark, and is returned.
fn settle(
    dest: &mut Destination,
    spec: &SyncSpec,
    verdict: Result<(), String>,
) -> Option<SyncError> {
    let to = spec.to.display().to_string();
    let new = dest.current_made().cloned();
    let Err(why) = verdict else {
        dest.mark_verified();
        tracing::info!(
            dest = to,
            generation = new.as_ref().map(|m| m.name.as_str()),
            "the new generation passed its verify"
        );
        return None;
    };
    let failed_source = new.as_ref().map(|m| m.source.clone()).unwrap_or_default();
    let has_previous =
        crate::sync::tree::rollback_target(dest.record(), dest.current_name(), None).is_ok();
    let running = match has_previous {
        true => match dest.roll_back(None, "verify", false, Some(&why)) {
            Ok(back) => {
                tracing::error!(
                    dest = to,
                    failed = failed_source,
                    running = back.source,
                    "the new generation failed its verify ({why}); the previous one is swapped back"
                );
                Some(back)
            }
            Err(e) => return Some(e.into()),
        },
        false => {
            dest.mark_failed(&why);
            tracing::error!(
                dest = to,
                failed = failed_source,
                "the new generation failed its verify ({why}); no previous generation is kept, so it stays"
            );
            None
        }
    };
    Some(SyncError::Verify {
        dest: to,
        failed: failed_source,
        why,
        running: running.map(|m| m.source),
    })
}

/// The verify command, up to `verify_attempts` times (1 s apart), each bounded by
/// `verify_timeout`; the last failure's description.
async fn run_verify(verify: &str, spec: &SyncSpec, new: Option<&Made>) -> Result<(), String> {
    let mut last = String::new();
    for attempt in 1..=spec.verify_attempts {
        if attempt > 1 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let mut command = tokio::process::Command::new("/bin/sh");
        command
            .arg("-c")
            .arg(verify)
            .env("BOOTSTAGE_DEST", &spec.to)
            .env("BOOTSTAGE_SOURCE", new.map_or("", |m| m.source.as_str()))
            .env("BOOTSTAGE_GENERATION", new.map_or("", |m| m.name.as_str()));
        last = match child::run_bounded(command, spec.verify_timeout).await {
            Ok(status) if status.success() => return Ok(()),
            Ok(status) => format!("verify {}", child::describe(status)),
            Err(e) => format!("verify: {e}"),
        };
        tracing::warn!(dest = %spec.to.display(), attempt, of = spec.verify_attempts, "{last}");
    }
    Err(match spec.verify_attempts {
        1 => last,
        n => format!("{last} (attempt {n} of {n})"),
    })
}

/// Runs the change hook with `/bin/sh -c`, bounded; its failure is logged, never fatal
/// (as the watch loop runs it).
pub(crate) async fn run_hook(hook: &str, changed: &str, limit: Duration) {
    let mut command = tokio::process::Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(hook)
        .env("BOOTSTAGE_CHANGED", changed);
    match child::run_bounded(command, limit).await {
        Ok(status) if status.success() => tracing::info!("--on-change hook done"),
        Ok(status) => tracing::error!("--on-change hook {}", child::describe(status)),
        Err(e) => tracing::error!("--on-change hook: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_hook_runs_for_what_is_owed_it_and_names_every_swap() {
        let specs: Vec<SyncSpec> = ["/srv/a", "/srv/b", "/srv/c"]
            .iter()
            .map(|to| SyncSpec::plain("s3://b/p/", std::path::Path::new(to)))
            .collect();
        let o = |swapped, owes| Some(Owing { swapped, owes });
        let none = || Vec::<String>::new();
        let state = || vec!["/state".to_string()];
        // (also, each destination: None for a failed pass) → what the hook names, if it
        // runs.
        type Case = (Vec<String>, [Option<Owing>; 3], Option<Vec<&'static str>>);
        let cases: [Case; 7] = [
            (none(), [None, None, None], None),
            // A swap that recorded no hook owed (the first pass, no verify): no hook.
            (none(), [o(true, false), o(false, false), None], None),
            (
                none(),
                [o(true, true), o(false, false), None],
                Some(vec!["/srv/a"]),
            ),
            // Owed by an earlier run that ended before the hook returned.
            (
                none(),
                [o(false, false), o(false, true), None],
                Some(vec!["/srv/b"]),
            ),
            // Once it runs, it names every swap.
            (
                none(),
                [o(true, false), o(false, false), o(true, true)],
                Some(vec!["/srv/a", "/srv/c"]),
            ),
            (state(), [None, o(false, false), None], Some(vec!["/state"])),
            (
                state(),
                [o(true, false), None, o(false, true)],
                Some(vec!["/state", "/srv/a", "/srv/c"]),
            ),
        ];
        for (also, owing, expected) in cases {
            let expected = expected.map(|e| e.iter().map(|n| n.to_string()).collect::<Vec<_>>());
            assert_eq!(
                first_hook(&also, &specs, &owing),
                expected,
                "{also:?} {owing:?}"
            );
        }
    }
}
