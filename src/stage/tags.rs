//! `bootstage.report.tags`: the instance's status tags written where its life turns
//! (`report::tags` decides what they say and what changed; this acts on it): `booting`
//! when the lifecycle watcher starts, `ready` beside the ready notice, `failed` or `held`
//! beside the failure notice (before ABANDON), `draining` when the watcher drains.
//!
//! - One `CreateTags` on the instance itself (`aws::ec2`), only with the tags whose value
//!   changed since the last write of this boot: what was written is recorded in the state
//!   dir (`report/tags.json`, with a count of its writes). The lock (`report/tags.lock`) is
//!   held to decide and to record, never over the network: a slow `booting` cannot keep
//!   `ready` or `failed` waiting past its bound. A write that finds, when it records, that
//!   another ended while it was under way cannot know which of the two EC2 applied last:
//!   it sends the status that stands again (`booting` never over a later one), so a late
//!   `booting` does not stay.
//! - Bounded: all of it (settings, credentials, the call and its retries) within
//!   [`DEADLINE`]; a failure is logged, never returned: a tag never fails or holds a boot.
//! - The release: each sync destination's current version, read from its home's
//!   `generations.json` without taking its lock or changing anything there (descriptor-
//!   relative, no symlink followed, a home that is not root's is ignored).
//! - Settings: the parameters' `bootstage.report`, else the image's
//!   `/etc/bootstage/report.json`. The instance: `instance.json`, else IMDS
//!   (`stage::identity`): a boot whose metadata stage failed is tagged `failed` too. The
//!   region: the instance's AWS region (`Facts::aws_region`: none from another cloud's).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::aws::Aws;
use crate::aws::ec2::Ec2;
use crate::base::retry::Deadline;
use crate::imds::facts::Facts;
use crate::report::emf;
use crate::report::tags::STATUS;
use crate::report::tags::{self, Moment, Status};
use crate::settings::Bootstage;
use crate::settings::report::Config;
use crate::stage::error::Error;
use crate::stage::identity;
use crate::stage::query;
use crate::state::StateDir;
use crate::sync::fsat;
use crate::sync::tree::{self, Record as Generations};

/// The image's report settings, used when the parameters have none (the notices take
/// theirs from `--report-config`; the watcher uses this).
pub const REPORT_CONFIG: &str = "/etc/bootstage/report.json";
/// Everything one write does, finding the credentials included.
pub const DEADLINE: Duration = Duration::from_secs(10);
/// Each attempt of `CreateTags`.
const ATTEMPT: Duration = Duration::from_secs(4);
/// What was written this boot, and its lock, in the state dir's `report/`: a
/// `RuntimeDirectory=` of the ready, failure and lifecycle units, so writable under their
/// `ProtectSystem=strict`.
const DIR: &str = "report";
const RECORD: &str = "report/tags.json";
const LOCK: &str = "report/tags.lock";
/// The largest `generations.json` read for a release.
const MAX_GENERATIONS: u64 = 1024 * 1024;

/// `tags.json`: the instance the tags were written on, their values, and how many writes
/// were recorded (a write that sees it change while it was sending knows another ended).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Written {
    instance_id: String,
    tags: BTreeMap<String, String>,
    #[serde(default)]
    writes: u64,
}

/// What one write did.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Off,
    Unchanged,
    /// A later status stands (`booting` after `ready`).
    Kept(String),
    Written(Vec<(String, String)>),
    /// Written, and another write ended meanwhile: `again` sent once more, as it stands.
    Repaired {
        changed: Vec<(String, String)>,
        again: Vec<(String, String)>,
    },
}

/// Writes the tags of `status` (with `ready`, the time from `pendingTime` to READY) when
/// `bootstage.report.tags` is on and something changed. Logs what it did; never fails.
pub async fn publish(state: &StateDir, fallback: &Path, status: Status, ready: Option<Duration>) {
    let deadline = Deadline::after(DEADLINE);
    let work = write(state, fallback, status, ready, deadline);
    match tokio::time::timeout(deadline.remaining(), work).await {
        Ok(Ok(Outcome::Written(changed))) => {
            tracing::info!("the instance's tags: {}", said(&changed));
        }
        Ok(Ok(Outcome::Repaired { changed, again })) => tracing::info!(
            "the instance's tags: {}; another write ended meanwhile, so again: {}",
            said(&changed),
            said(&again)
        ),
        Ok(Ok(Outcome::Kept(recorded))) => tracing::info!(
            "the instance's status stays {recorded}: {} does not replace it",
            status.name()
        ),
        Ok(Ok(Outcome::Unchanged)) => {
            tracing::debug!("the instance's tags are unchanged: no CreateTags")
        }
        Ok(Ok(Outcome::Off)) => {}
        Ok(Err(why)) => tracing::warn!(
            "the instance's status tag ({}) was not written: {why}",
            status.name()
        ),
        Err(_) => tracing::warn!(
            "the instance's status tag ({}) was not written within {}",
            status.name(),
            humantime::format_duration(DEADLINE)
        ),
    }
}

fn said(tags: &[(String, String)]) -> String {
    let said: Vec<String> = tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
    said.join(", ")
}

async fn write(
    state: &StateDir,
    fallback: &Path,
    status: Status,
    ready: Option<Duration>,
    deadline: Deadline,
) -> Result<Outcome, String> {
    if !config(state, fallback).is_some_and(|c| c.tags) {
        return Ok(Outcome::Off);
    }
    // instance.json, else IMDS: a boot whose metadata stage failed is tagged too.
    let facts = identity::whoami(state)
        .await
        .map_err(|e| format!("the instance is unknown: {e}"))?;
    let instance_id = facts
        .instance_id
        .clone()
        .filter(|id| {
            id.starts_with("i-") && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        .ok_or("the instance's facts name no instance")?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state.root().join(DIR))
        .map_err(|e| format!("{}: {e}", state.root().join(DIR).display()))?;
    let path = state.root().join(RECORD);
    // Decided under the lock; sent without it.
    let before = {
        let _lock = state
            .lock_named(LOCK, deadline)
            .await
            .map_err(|e| e.to_string())?;
        recorded(&path, &instance_id)
    };
    let said = before.tags.get(STATUS).map(String::as_str);
    if !tags::may_say(said, status) {
        return Ok(Outcome::Kept(said.unwrap_or_default().to_string()));
    }
    let releases = tokio::task::spawn_blocking({
        let state = state.clone();
        move || releases(&state)
    })
    .await
    .unwrap_or_default();
    let wanted = tags::wanted(&Moment {
        status,
        releases,
        ready,
    });
    let changed = tags::changes(&before.tags, &wanted);
    if changed.is_empty() {
        return Ok(Outcome::Unchanged);
    }
    let aws = Aws::load(facts.aws_region(), &["EC2"], ATTEMPT)
        .await
        .map_err(|e| e.to_string())?;
    let ec2 = Ec2::new(&aws, ATTEMPT).map_err(|e| e.to_string())?;
    ec2.create_tags(&instance_id, &changed, deadline)
        .await
        .map_err(|e| e.to_string())?;
    // Recorded under the lock, against what is recorded now.
    let _lock = state
        .lock_named(LOCK, deadline)
        .await
        .map_err(|e| e.to_string())?;
    let now = recorded(&path, &instance_id);
    let (tags, again) = match now.writes == before.writes {
        true => {
            let mut tags = before.tags;
            tags.extend(changed.iter().cloned());
            (tags, None)
        }
        false => {
            let tags = settle(now.tags, status, &changed);
            let again: Vec<(String, String)> =
                tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            if let Err(e) = ec2.create_tags(&instance_id, &again, deadline).await {
                // Which status EC2 holds is unknown: the next write sends it again.
                let mut tags = tags;
                tags.remove(STATUS);
                record(&path, instance_id, tags, now.writes);
                return Err(e.to_string());
            }
            (tags, Some(again))
        }
    };
    record(&path, instance_id, tags, now.writes);
    Ok(match again {
        None => Outcome::Written(changed),
        Some(again) => Outcome::Repaired { changed, again },
    })
}

/// What stands after this write (`status`, which sent `changed`) and another that ended
/// while it was under way (which recorded `theirs`): `booting` never over a later
/// status, else this write's values over theirs.
fn settle(
    theirs: BTreeMap<String, String>,
    status: Status,
    changed: &[(String, String)],
) -> BTreeMap<String, String> {
    let mut tags = theirs;
    let stands = tags::may_say(tags.get(STATUS).map(String::as_str), status);
    for (key, value) in changed {
        if stands || (key != STATUS && !tags.contains_key(key)) {
            tags.insert(key.clone(), value.clone());
        }
    }
    tags
}

/// `tags.json` as recorded for `instance_id` (nothing when it is another's or unreadable).
fn recorded(path: &Path, instance_id: &str) -> Written {
    std::fs::read(path)
        .ok()
        .and_then(|text| serde_json::from_slice::<Written>(&text).ok())
        .filter(|w| w.instance_id == instance_id)
        .unwrap_or_default()
}

/// Records `tags`, one write more than `writes`; a record that cannot be written is
/// logged (the next write sends every tag again).
fn record(path: &Path, instance_id: String, tags: BTreeMap<String, String>, writes: u64) {
    let written = Written {
        instance_id,
        tags,
        writes: writes + 1,
    };
    let text = serde_json::to_vec_pretty(&written).expect("records serialize");
    if let Err((path, e)) = crate::state::atomic::write_file(path, &text) {
        tracing::warn!(
            "{}: {e}: the next write sends every tag again",
            path.display()
        );
    }
}

/// The parameters' `bootstage.report`, else the image's file; one that does not parse
/// (only the image's can: the metadata stage checked the parameters) is logged.
pub fn config(state: &StateDir, fallback: &Path) -> Option<Config> {
    let found = query::setting(state, "report", fallback, Error::Usage);
    let parsed = match found {
        Ok(Some((value, origin))) => Config::from_value(&value, &origin).map_err(|e| e.0),
        Ok(None) => return None,
        Err(e) => Err(e.to_string()),
    };
    parsed
        .inspect_err(|e| tracing::warn!("{e}: no report of this boot"))
        .ok()
}

/// From `pendingTime` (in `facts`) to `now`, when this boot is the launch's own
/// (`report::emf::time_to_ready`).
pub fn ready_time(facts: Option<&Facts>, now: SystemTime) -> Option<Duration> {
    let pending = facts
        .and_then(|f| f.pending_time.as_deref())
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok())?;
    let booted = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .ok()
        .and_then(|up| now.checked_sub(Duration::from(up)))?;
    emf::time_to_ready(pending, booted, now)
}

/// Each configured destination's name and current version, where it has one.
fn releases(state: &StateDir) -> Vec<(String, String)> {
    let params = std::fs::read(state.params_json())
        .ok()
        .and_then(|text| serde_json::from_slice(&text).ok());
    let Some(settings) = params.and_then(|p| Bootstage::from_params(&p).ok()) else {
        return Vec::new();
    };
    settings
        .sync
        .iter()
        .filter_map(|spec| {
            let name = spec.to.file_name()?.to_string_lossy().into_owned();
            Some((name, current_version(&spec.to)?))
        })
        .collect()
}

/// The version of `dest`'s current generation, read as the tree keeps it (`dest` a link to
/// `gen-…` in its home, `sync::tree::home_name`, whose record, `sync::tree::GENERATIONS`,
/// holds each generation's version),
/// relative to descriptors, following no symlink bootstage did not make; nothing is
/// locked or changed. `None` when anything is not as bootstage leaves it.
fn current_version(dest: &Path) -> Option<String> {
    let dest = std::path::absolute(dest).ok()?;
    let name = dest.file_name()?;
    let parent = fsat::open_dir_path(dest.parent()?, false).ok()?;
    let home_name = tree::home_name(name);
    let home = fsat::open_dir(&parent, &home_name).ok()?;
    let st = nix::sys::stat::fstat(&home).ok()?;
    if st.st_uid != nix::unistd::geteuid().as_raw() || st.st_mode & 0o022 != 0 {
        return None;
    }
    let target = nix::fcntl::readlinkat(&parent, name).ok()?;
    let target = Path::new(&target);
    if target.parent() != Some(Path::new(&home_name)) {
        return None;
    }
    let generation = target.file_name()?.to_str()?;
    let (file, _) = fsat::open_file(&home, OsStr::new(tree::GENERATIONS)).ok()?;
    let mut text = Vec::new();
    file.take(MAX_GENERATIONS).read_to_end(&mut text).ok()?;
    let record: Generations = serde_json::from_slice(&text).ok()?;
    record
        .generations
        .into_iter()
        .find(|made| made.name == generation)
        .map(|made| made.version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tags::{READY_SECONDS, RELEASE};

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn two_writes_at_once_settle_on_the_later_status() {
        let pairs = |m: BTreeMap<String, String>| m.into_iter().collect::<Vec<_>>();
        // (recorded by the other write, this write's status and what it sent, what stands)
        let cases = [
            // A slow booting ends after ready: ready stands, booting's release is kept
            // only where ready had none.
            (
                map(&[(STATUS, "ready"), (READY_SECONDS, "41")]),
                Status::Booting,
                map(&[(STATUS, "booting"), (RELEASE, "c=1")]),
                map(&[(STATUS, "ready"), (READY_SECONDS, "41"), (RELEASE, "c=1")]),
            ),
            (
                map(&[(STATUS, "failed"), (RELEASE, "c=2")]),
                Status::Booting,
                map(&[(STATUS, "booting"), (RELEASE, "c=1")]),
                map(&[(STATUS, "failed"), (RELEASE, "c=2")]),
            ),
            // Ready ends after a booting that was recorded meanwhile: ready stands.
            (
                map(&[(STATUS, "booting")]),
                Status::Ready,
                map(&[(STATUS, "ready"), (READY_SECONDS, "41")]),
                map(&[(STATUS, "ready"), (READY_SECONDS, "41")]),
            ),
            (
                map(&[(STATUS, "ready"), (RELEASE, "c=1")]),
                Status::Failed,
                map(&[(STATUS, "failed"), (RELEASE, "c=2")]),
                map(&[(STATUS, "failed"), (RELEASE, "c=2")]),
            ),
        ];
        for (theirs, status, changed, expected) in cases {
            assert_eq!(
                settle(theirs.clone(), status, &pairs(changed)),
                expected,
                "{theirs:?} {status:?}"
            );
        }
    }
}
