//! Releases: a sync entry's release pointer read on each pass (one `GetParameter`, or
//! one `GetParameters` for up to 10 pointers), and a new generation's health check: after
//! the swap (and `--on-change`), the entry's `verify` command, bounded and retried; if it
//! fails, the previous generation swapped back with one rename, `--on-change` again, the
//! failed one marked (`tree::Record`), and a `release_failed` notice.

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

/// After a pass with a `verify` command: a new generation is checked (and rolled back
/// from if it fails); an unchanged destination whose current generation failed its
/// verify fails again (a restart must not pass a release that failed).
pub(super) async fn check(
    dest: &mut Destination,
    spec: &SyncSpec,
    hooks: &Hooks,
    mut report: Report,
) -> Result<Report, SyncError> {
    let Some(verify) = &spec.verify else {
        return Ok(report);
    };
    let to = spec.to.display().to_string();
    if !report.swapped {
        return match dest.current_made().filter(|m| m.failed.is_some()) {
            Some(m) => {
                let recorded = m.failed.as_deref().unwrap_or_default();
                let why = recorded.split_once(": ").map_or(recorded, |(_, why)| why);
                Err(SyncError::Verify {
                    dest: to,
                    failed: m.source.clone(),
                    why: why.to_string(),
                    running: None,
                })
            }
            None => Ok(report),
        };
    }
    let new = dest.current_made().cloned();
    // The hook here, not after the pass: the app must serve the new tree before it is
    // checked. The watch loop is told no swap is left to hook.
    if let Some(hook) = &hooks.on_change {
        hooks.notifier.reloading();
        run_hook(hook, &to, hooks.limit).await;
        report.swapped = false;
    }
    let outcome = run_verify(verify, spec, new.as_ref()).await;
    let Err(why) = outcome else {
        tracing::info!(
            dest = to,
            generation = new.as_ref().map(|m| m.name.as_str()),
            "the new generation passed its verify"
        );
        if hooks.on_change.is_some() {
            hooks.notifier.ready(&format!("{to}: new release verified"));
        }
        return Ok(report);
    };
    let failed_source = new.as_ref().map(|m| m.source.clone()).unwrap_or_default();
    let has_previous =
        crate::sync::tree::rollback_target(dest.record(), dest.current_name(), None).is_ok();
    let running = match has_previous {
        true => {
            let back = dest.roll_back(None, "verify", false, Some(&why))?;
            tracing::error!(
                dest = to,
                failed = failed_source,
                running = back.source,
                "the new generation failed its verify ({why}); the previous one is swapped back"
            );
            if let Some(hook) = &hooks.on_change {
                run_hook(hook, &to, hooks.limit).await;
            }
            Some(back)
        }
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
    if hooks.on_change.is_some() {
        hooks
            .notifier
            .ready(&format!("{to}: new release failed its verify"));
    }
    let about = json!({
        "dest": to,
        "failed": described(new.as_ref()),
        "running": described(running.as_ref()),
        "why": why,
    });
    if let Err(e) = deliver::life(&hooks.state, &hooks.notify, "release_failed", about, None).await
    {
        tracing::warn!("the release_failed notice: {e}");
    }
    Err(SyncError::Verify {
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
