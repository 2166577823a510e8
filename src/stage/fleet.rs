//! `bootstage fleet [--group NAME] [--json] [--logs INSTANCE]`: the fleet as its status
//! tags tell it (`bootstage.report.tags`), for an operator anywhere with credentials
//! (`ec2:DescribeInstances`; `s3:ListBucket` and `s3:GetObject` for `--logs`).
//!
//! - Which instances: those of the auto scaling group `--group` names (tag
//!   `aws:autoscaling:groupName`), else every instance with a `bootstage:status` tag;
//!   `DescribeInstances` with that filter, [`ec2::MAX_PAGE`] a page: 1,000 instances in
//!   one call, at most ⌈N / 1000⌉ (`--page-size` is for tests).
//! - One line per instance: id, group, zone, EC2 state, `bootstage:status`, release,
//!   ready seconds, launch time; failures first ([`order`]), then a summary line
//!   ([`summarize`]): counts per status, p50 and max ready seconds, the instances on a
//!   release other than the majority. `--json`: the same as one document.
//! - `--logs INSTANCE`: the forensics its last failed boot uploaded (`bootstage.report.logs`),
//!   from the prefix `--logs-prefix` (or `BOOTSTAGE_LOGS_PREFIX`) gives, written as the
//!   setting is (`s3://bucket/boot-logs/{instance_id}/{boot_id}/`): the boot whose objects
//!   are the newest ([`latest_boot`]), each object under a `==> s3://… <==` line, read and
//!   printed chunk by chunk, at most [`MAX_OBJECT`] bytes of each ([`Excerpt`]).
//! - Listings are bounded (`ec2::Paging`): a continuation token seen before, more than
//!   [`MAX_LIST_PAGES`] pages or [`MAX_KEYS`] keys is an error, not a listing cut short.
//!
//! Tags are anyone's to write who may call `CreateTags`, and the forensics' keys and
//! bodies anyone's with `s3:PutObject` on the prefix (every instance's role, and so its
//! app): tag values and keys are shown with any character outside a tag's set escaped
//! (`report::tags::shown`), bodies with any character but printable ASCII, newlines and
//! tabs escaped (`report::tags::shown_text`); a ready-seconds that is not a number is not
//! one.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use serde_json::{Value, json};

use crate::aws::ec2::{self, Ec2, Filter, Instance, Paging};
use crate::aws::{self, Aws, Failure, Kind};
use crate::base::retry::{self, Deadline};
use crate::orchestrator::GROUP_TAG;
use crate::report::tags::{READY_SECONDS, RELEASE, STATUS, Status, shown, shown_text};
use crate::settings::report::Config;
use crate::stage::error::{Error, ExitCode, ExitStatus, Result};
use crate::state::StateDir;

/// `bootstage fleet`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub group: Option<String>,
    pub json: bool,
    /// `--logs INSTANCE`: print its last failed boot's forensics instead.
    pub logs: Option<String>,
    /// Where the forensics are (`bootstage.report.logs`' form).
    pub logs_prefix: Option<String>,
    /// Instances a `DescribeInstances` page.
    pub page_size: u32,
    /// Everything the command does.
    pub timeout: Duration,
}

pub const DEFAULT_TIMEOUT: &str = "60s";
/// Each attempt of each call.
const ATTEMPT: Duration = Duration::from_secs(20);
/// The most of one object `--logs` prints (the journal's excerpt is 1 MiB by default).
pub const MAX_OBJECT: usize = 16 * 1024 * 1024;
/// The most pages and keys one forensics listing reads.
pub const MAX_LIST_PAGES: usize = 1000;
pub const MAX_KEYS: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("{0}")]
    Aws(Failure),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    NotFound(String),
}

impl ExitStatus for FleetError {
    fn exit_code(&self) -> ExitCode {
        match self {
            FleetError::Aws(f) => match f.kind {
                Kind::Refused => ExitCode::NoPerm,
                Kind::Throttled | Kind::Transient => ExitCode::TempFail,
                Kind::Permanent => ExitCode::Failed,
            },
            FleetError::Usage(_) => ExitCode::Usage,
            FleetError::NotFound(_) => ExitCode::NoInput,
        }
    }
}

impl From<FleetError> for Error {
    fn from(e: FleetError) -> Error {
        Error::Stage(Box::new(e))
    }
}

/// One instance, as the listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub id: String,
    pub group: Option<String>,
    pub zone: String,
    pub state: String,
    pub status: Option<String>,
    pub release: Option<String>,
    pub ready_seconds: Option<u64>,
    pub launched: String,
}

impl Row {
    pub fn of(instance: &Instance) -> Row {
        let tag = |key: &str| {
            instance
                .tags
                .get(key)
                .map(|v| shown(v))
                .filter(|v| !v.is_empty())
        };
        Row {
            id: shown(&instance.id),
            group: tag(GROUP_TAG),
            zone: shown(&instance.availability_zone),
            state: shown(&instance.state),
            status: tag(STATUS),
            release: tag(RELEASE),
            ready_seconds: instance
                .tags
                .get(READY_SECONDS)
                .and_then(|v| v.trim().parse().ok()),
            launched: shown(&instance.launch_time),
        }
    }
}

/// What the summary line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub instances: usize,
    /// Each status seen, in [`order`]'s order (`untagged`: no `bootstage:status`).
    pub statuses: Vec<(String, usize)>,
    /// The median (nearest rank) and the largest ready seconds.
    pub ready_p50: Option<u64>,
    pub ready_max: Option<u64>,
    /// The release most instances are on (ties: the smallest value).
    pub majority: Option<String>,
    /// The instances on another release.
    pub off_majority: Vec<String>,
}

/// Where a status sorts: failures first (failed, held), then what is under way (booting,
/// draining), an unknown or missing status, and ready last.
pub fn rank(status: Option<&str>) -> u8 {
    match status.and_then(Status::parse) {
        Some(Status::Failed) => 0,
        Some(Status::Held) => 1,
        Some(Status::Booting) => 2,
        Some(Status::Draining) => 3,
        None => 4,
        Some(Status::Ready) => 5,
    }
}

/// The listing's order: by [`rank`], then group, launch time and id.
pub fn order(rows: &mut [Row]) {
    rows.sort_by(|a, b| {
        (rank(a.status.as_deref()), &a.group, &a.launched, &a.id).cmp(&(
            rank(b.status.as_deref()),
            &b.group,
            &b.launched,
            &b.id,
        ))
    });
}

/// The summary of `rows` (in any order).
pub fn summarize(rows: &[Row]) -> Summary {
    let mut counts: BTreeMap<(u8, String), usize> = BTreeMap::new();
    for row in rows {
        let name = row.status.clone().unwrap_or_else(|| "untagged".into());
        *counts
            .entry((rank(row.status.as_deref()), name))
            .or_default() += 1;
    }
    let mut ready: Vec<u64> = rows.iter().filter_map(|r| r.ready_seconds).collect();
    ready.sort_unstable();
    let ready_p50 = (!ready.is_empty()).then(|| ready[ready.len().div_ceil(2) - 1]);
    let mut releases: BTreeMap<&str, usize> = BTreeMap::new();
    for release in rows.iter().filter_map(|r| r.release.as_deref()) {
        *releases.entry(release).or_default() += 1;
    }
    // The most instances; among equals, the first in order (the smallest).
    let majority = releases
        .iter()
        .fold(None::<(&str, usize)>, |best, (r, n)| match best {
            Some((_, m)) if m >= *n => best,
            _ => Some((r, *n)),
        })
        .map(|(r, _)| r.to_string());
    let off_majority = rows
        .iter()
        .filter(|r| r.release.is_some() && r.release != majority)
        .map(|r| r.id.clone())
        .collect();
    Summary {
        instances: rows.len(),
        statuses: counts.into_iter().map(|((_, s), n)| (s, n)).collect(),
        ready_p50,
        ready_max: ready.last().copied(),
        majority,
        off_majority,
    }
}

const HEADERS: [&str; 8] = [
    "INSTANCE", "GROUP", "AZ", "STATE", "STATUS", "RELEASE", "READY", "LAUNCHED",
];

/// The listing as text: a header, one line per row in columns, the summary line.
pub fn table(rows: &[Row], summary: &Summary) -> String {
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let cells: Vec<[String; 8]> = rows
        .iter()
        .map(|r| {
            [
                r.id.clone(),
                dash(&r.group),
                r.zone.clone(),
                r.state.clone(),
                dash(&r.status),
                dash(&r.release),
                r.ready_seconds
                    .map_or_else(|| "-".into(), |s| format!("{s}s")),
                r.launched.clone(),
            ]
        })
        .collect();
    let mut widths = HEADERS.map(str::len);
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            out.push_str(cell);
            let pad = widths[i].saturating_sub(cell.chars().count());
            out.extend(std::iter::repeat_n(' ', pad));
        }
        out.trim_end().to_string() + "\n"
    };
    let mut text = line(&HEADERS.map(String::from));
    for row in &cells {
        text += &line(row);
    }
    text + &summary_line(summary) + "\n"
}

/// `30 instances: 4 failed, 2 held, 24 ready; ready p50 41s, max 97s; 2 not on the majority release config=0123456789ab`
pub fn summary_line(s: &Summary) -> String {
    let noun = if s.instances == 1 {
        "instance"
    } else {
        "instances"
    };
    let mut line = format!("{} {noun}", s.instances);
    if !s.statuses.is_empty() {
        let counts: Vec<String> = s.statuses.iter().map(|(k, n)| format!("{n} {k}")).collect();
        line += &format!(": {}", counts.join(", "));
    }
    match (s.ready_p50, s.ready_max) {
        (Some(p50), Some(max)) => line += &format!("; ready p50 {p50}s, max {max}s"),
        _ => line += "; no ready seconds",
    }
    if let Some(majority) = &s.majority {
        line += &format!(
            "; {} not on the majority release {majority}",
            s.off_majority.len()
        );
    }
    line
}

/// The listing as JSON (one document, a newline after it).
pub fn document(rows: &[Row], summary: &Summary) -> String {
    let instances: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "id": r.id,
                "group": r.group,
                "availability_zone": r.zone,
                "state": r.state,
                "status": r.status,
                "release": r.release,
                "ready_seconds": r.ready_seconds,
                "launch_time": r.launched,
            })
        })
        .collect();
    let statuses: serde_json::Map<String, Value> = summary
        .statuses
        .iter()
        .map(|(k, n)| (k.clone(), json!(n)))
        .collect();
    let doc = json!({
        "instances": instances,
        "summary": {
            "instances": summary.instances,
            "statuses": statuses,
            "ready_seconds": {"p50": summary.ready_p50, "max": summary.ready_max},
            "majority_release": summary.majority,
            "off_majority": summary.off_majority,
        },
    });
    serde_json::to_string_pretty(&doc).expect("documents serialize") + "\n"
}

/// An object's body as `--logs` shows it, chunk by chunk: UTF-8 decoded across chunks
/// (a byte that is no UTF-8 is U+FFFD), shown with `report::tags::shown_text`, at most
/// `max` bytes of it.
#[derive(Debug)]
pub struct Excerpt {
    pending: Vec<u8>,
    read: usize,
    max: usize,
}

impl Excerpt {
    pub fn new(max: usize) -> Excerpt {
        Excerpt {
            pending: Vec::new(),
            read: 0,
            max,
        }
    }

    /// What `chunk` shows (up to the bound), and whether it all fitted (`false`: the object
    /// was cut at the bound).
    pub fn feed(&mut self, chunk: &[u8]) -> (String, bool) {
        let take = chunk.len().min(self.max - self.read);
        self.read += take;
        self.pending.extend_from_slice(&chunk[..take]);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(text) => {
                    out += &shown_text(text);
                    self.pending.clear();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    let text = std::str::from_utf8(&self.pending[..valid]).expect("valid");
                    out += &shown_text(text);
                    match e.error_len() {
                        Some(bad) => {
                            out += &shown_text("\u{fffd}");
                            self.pending.drain(..valid + bad);
                        }
                        // A character cut by the chunk's end: the next chunk ends it.
                        None => {
                            self.pending.drain(..valid);
                            break;
                        }
                    }
                }
            }
        }
        (out, take == chunk.len())
    }

    /// What is left at the end: a character the object cut short.
    pub fn finish(self) -> String {
        match self.pending.is_empty() {
            true => String::new(),
            false => shown_text("\u{fffd}"),
        }
    }
}

/// The boot id whose objects are the newest, of `objects` (key, last modified in ms)
/// under `before` (the prefix up to `{boot_id}`): the key's next path segment.
pub fn latest_boot(objects: &[(String, i64)], before: &str) -> Option<String> {
    let mut newest: BTreeMap<&str, i64> = BTreeMap::new();
    for (key, modified) in objects {
        let Some(rest) = key.strip_prefix(before) else {
            continue;
        };
        let Some((boot, _)) = rest.split_once('/') else {
            continue;
        };
        let at = newest.entry(boot).or_insert(i64::MIN);
        *at = (*at).max(*modified);
    }
    newest
        .into_iter()
        .max_by_key(|(boot, at)| (*at, std::cmp::Reverse(*boot)))
        .map(|(boot, _)| boot.to_string())
}

pub async fn run(state: &StateDir, args: &Settings) -> Result<()> {
    let deadline = Deadline::after(args.timeout);
    if let Some(instance) = &args.logs {
        return logs(state, args, instance, deadline).await;
    }
    let aws = Aws::load(aws::instance_region(state), &["EC2"], ATTEMPT)
        .await
        .map_err(boxed)?;
    let ec2 = Ec2::new(&aws, ATTEMPT).map_err(boxed)?;
    let filter = match &args.group {
        Some(group) => Filter {
            name: format!("tag:{GROUP_TAG}"),
            values: vec![group.clone()],
        },
        None => Filter {
            name: "tag-key".into(),
            values: vec![STATUS.into()],
        },
    };
    let instances = ec2
        .describe_instances(&[filter], args.page_size, deadline)
        .await
        .map_err(FleetError::Aws)?;
    tracing::debug!(
        calls = ec2.calls(),
        instances = instances.len(),
        "DescribeInstances"
    );
    let mut rows: Vec<Row> = instances.iter().map(Row::of).collect();
    order(&mut rows);
    let summary = summarize(&rows);
    match args.json {
        true => print!("{}", document(&rows, &summary)),
        false => print!("{}", table(&rows, &summary)),
    }
    Ok(())
}

fn boxed(e: aws::AwsError) -> Error {
    Error::Stage(Box::new(e))
}

fn prefixed(call: &str, mut e: Failure) -> Failure {
    e.message = format!("{call}: {}", e.message);
    e
}

/// `--logs INSTANCE`: the objects of its last failed boot, each under a header line.
async fn logs(state: &StateDir, args: &Settings, instance: &str, deadline: Deadline) -> Result<()> {
    if !(instance.starts_with("i-") && instance[2..].bytes().all(|b| b.is_ascii_alphanumeric()))
        || instance.len() < 3
    {
        return Err(
            FleetError::Usage(format!("--logs {instance:?}: not an instance id (i-…)")).into(),
        );
    }
    let Some(prefix) = &args.logs_prefix else {
        return Err(FleetError::Usage(
            "--logs needs the forensics' prefix: --logs-prefix s3://bucket/boot-logs/{instance_id}/{boot_id}/ (or BOOTSTAGE_LOGS_PREFIX), as bootstage.report.logs says it".into(),
        )
        .into());
    };
    let config = Config::from_value(&json!({"logs": prefix}), "--logs-prefix")
        .map_err(|e| FleetError::Usage(e.0))?;
    let logs = config.logs.expect("a prefix was given");
    let aws = Aws::load(aws::instance_region(state), &["S3"], ATTEMPT)
        .await
        .map_err(boxed)?;
    let s3 = aws.s3();
    // The prefix up to {boot_id}, the instance's; the boot is the newest under it.
    let expanded = logs.prefix.replace("{instance_id}", instance);
    let boot_prefix = match expanded.split_once("{boot_id}") {
        None => expanded.clone(),
        Some((before, after)) => {
            let listed = list(&s3, &logs.bucket, before, deadline).await?;
            let Some(boot) = latest_boot(&listed, before) else {
                return Err(FleetError::NotFound(format!(
                    "no forensics of {instance} under s3://{}/{before}",
                    logs.bucket
                ))
                .into());
            };
            format!("{before}{boot}{}", after.replace("{boot_id}", &boot))
        }
    };
    let objects = list(&s3, &logs.bucket, &boot_prefix, deadline).await?;
    if objects.is_empty() {
        return Err(FleetError::NotFound(format!(
            "no forensics of {instance} under s3://{}/{}",
            logs.bucket,
            shown(&boot_prefix)
        ))
        .into());
    }
    let mut out = std::io::stdout();
    for (key, _) in &objects {
        let failed = |why: &str| {
            FleetError::Aws(Failure::new(
                Kind::Transient,
                None,
                format!("s3:GetObject {}: {why}", shown(key)),
            ))
        };
        let answer = aws::call("S3", "s3:GetObject", retry::BACKOFF, deadline, || {
            s3.get_object().bucket(&logs.bucket).key(key).send()
        })
        .await
        .map_err(|e| FleetError::Aws(prefixed(&format!("s3:GetObject {}", shown(key)), e)))?;
        let mut body = answer.body;
        // The bucket is the operator's; the key anyone's who may put under the prefix.
        let mut shown_so_far = format!("==> s3://{}/{} <==\n", logs.bucket, shown(key));
        let mut excerpt = Excerpt::new(MAX_OBJECT);
        let mut last = '\n';
        let cut = loop {
            let chunk = tokio::time::timeout(deadline.remaining(), body.next())
                .await
                .map_err(|_| failed("the body was not read in time"))?;
            let (text, more) = match chunk {
                None => break false,
                Some(Ok(bytes)) => excerpt.feed(&bytes),
                Some(Err(e)) => return Err(failed(&format!("the body was not read ({e})")).into()),
            };
            shown_so_far += &text;
            if let Some(c) = shown_so_far.chars().next_back() {
                last = c;
            }
            // A reader that went away (`| head`): nothing more to print.
            if out.write_all(shown_so_far.as_bytes()).is_err() {
                return Ok(());
            }
            shown_so_far.clear();
            if !more {
                break true;
            }
        };
        let mut tail = excerpt.finish();
        if let Some(c) = tail.chars().next_back() {
            last = c;
        }
        if last != '\n' {
            tail.push('\n');
        }
        if cut {
            tail += &format!(
                "==> cut: only the first {} MiB of s3://{}/{} are shown <==\n",
                MAX_OBJECT / (1024 * 1024),
                logs.bucket,
                shown(key)
            );
        }
        if out.write_all((shown_so_far + &tail).as_bytes()).is_err() {
            return Ok(());
        }
    }
    let _ = out.flush();
    Ok(())
}

/// Every key under `prefix`, sorted, with its last modification (ms since the epoch).
async fn list(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
    deadline: Deadline,
) -> Result<Vec<(String, i64)>> {
    let mut found = Vec::new();
    let mut paging = Paging::new(MAX_LIST_PAGES, MAX_KEYS);
    let mut token: Option<String> = None;
    loop {
        let page = aws::call("S3", "s3:ListObjectsV2", retry::BACKOFF, deadline, || {
            s3.list_objects_v2()
                .bucket(bucket)
                .prefix(prefix)
                .set_continuation_token(token.clone())
                .send()
        })
        .await
        .map_err(|e| FleetError::Aws(prefixed("s3:ListObjectsV2", e)))?;
        for object in page.contents() {
            let modified = object
                .last_modified()
                .and_then(|t| t.to_millis().ok())
                .unwrap_or_default();
            if let Some(key) = object.key() {
                found.push((key.to_string(), modified));
            }
        }
        let next = page
            .next_continuation_token()
            .filter(|_| page.is_truncated() == Some(true))
            .map(str::to_string);
        match paging
            .next(next, page.contents().len())
            .map_err(|e| FleetError::Aws(prefixed("s3:ListObjectsV2", e)))?
        {
            Some(next) => token = Some(next),
            None => break,
        }
    }
    found.sort();
    Ok(found)
}

/// `ec2::MAX_PAGE`, as `--page-size`'s default.
pub const DEFAULT_PAGE: u32 = ec2::MAX_PAGE;

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, status: Option<&str>, release: Option<&str>, ready: Option<u64>) -> Row {
        Row {
            id: id.into(),
            group: Some("web".into()),
            zone: "us-east-1a".into(),
            state: "running".into(),
            status: status.map(String::from),
            release: release.map(String::from),
            ready_seconds: ready,
            launched: format!("2026-12-06T10:00:0{}Z", &id[id.len() - 1..]),
        }
    }

    #[test]
    fn failures_come_first_then_what_is_under_way_and_ready_last() {
        let mut rows = vec![
            row("i-1", Some("ready"), None, None),
            row("i-2", Some("booting"), None, None),
            row("i-3", None, None, None),
            row("i-4", Some("held"), None, None),
            row("i-5", Some("failed"), None, None),
            row("i-6", Some("draining"), None, None),
            row("i-7", Some("weird"), None, None),
            row("i-0", Some("failed"), None, None),
        ];
        order(&mut rows);
        let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(
            ids,
            ["i-0", "i-5", "i-4", "i-2", "i-6", "i-3", "i-7", "i-1"]
        );
        // Within a rank: group, then launch time.
        let mut rows = vec![
            Row {
                group: Some("b".into()),
                ..row("i-1", Some("failed"), None, None)
            },
            Row {
                group: Some("a".into()),
                ..row("i-2", Some("failed"), None, None)
            },
            Row {
                group: Some("a".into()),
                ..row("i-0", Some("failed"), None, None)
            },
        ];
        order(&mut rows);
        let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["i-0", "i-2", "i-1"]);
    }

    #[test]
    fn the_summary_counts_medians_and_finds_the_odd_releases() {
        let cases = [
            (
                vec![],
                Summary {
                    instances: 0,
                    statuses: vec![],
                    ready_p50: None,
                    ready_max: None,
                    majority: None,
                    off_majority: vec![],
                },
                "0 instances; no ready seconds",
            ),
            (
                vec![
                    row("i-1", Some("ready"), Some("c=a"), Some(40)),
                    row("i-2", Some("ready"), Some("c=a"), Some(10)),
                    row("i-3", Some("failed"), Some("c=b"), None),
                    row("i-4", Some("ready"), Some("c=a"), Some(97)),
                    row("i-5", None, None, None),
                    row("i-6", Some("ready"), Some("c=b"), Some(20)),
                ],
                Summary {
                    instances: 6,
                    statuses: vec![
                        ("failed".into(), 1),
                        ("untagged".into(), 1),
                        ("ready".into(), 4),
                    ],
                    // 10 20 40 97: the nearest rank of the median is the second.
                    ready_p50: Some(20),
                    ready_max: Some(97),
                    majority: Some("c=a".into()),
                    off_majority: vec!["i-3".into(), "i-6".into()],
                },
                "6 instances: 1 failed, 1 untagged, 4 ready; ready p50 20s, max 97s; 2 not on the majority release c=a",
            ),
            (
                vec![
                    row("i-1", Some("ready"), Some("c=b"), Some(5)),
                    row("i-2", Some("ready"), Some("c=a"), Some(7)),
                    row("i-3", Some("ready"), Some("c=b"), Some(6)),
                ],
                Summary {
                    instances: 3,
                    statuses: vec![("ready".into(), 3)],
                    ready_p50: Some(6),
                    ready_max: Some(7),
                    majority: Some("c=b".into()),
                    off_majority: vec!["i-2".into()],
                },
                "3 instances: 3 ready; ready p50 6s, max 7s; 1 not on the majority release c=b",
            ),
            (
                // A tie: the smallest value is the majority.
                vec![
                    row("i-1", Some("booting"), Some("c=b"), None),
                    row("i-2", Some("booting"), Some("c=a"), None),
                ],
                Summary {
                    instances: 2,
                    statuses: vec![("booting".into(), 2)],
                    ready_p50: None,
                    ready_max: None,
                    majority: Some("c=a".into()),
                    off_majority: vec!["i-1".into()],
                },
                "2 instances: 2 booting; no ready seconds; 1 not on the majority release c=a",
            ),
        ];
        for (rows, expected, line) in cases {
            let got = summarize(&rows);
            assert_eq!(got, expected);
            assert_eq!(summary_line(&got), line);
        }
    }

    #[test]
    fn the_table_aligns_and_shows_tags_safely() {
        let instance = Instance {
            id: "i-0abc".into(),
            state: "running".into(),
            availability_zone: "us-east-1b".into(),
            launch_time: "2026-12-06T10:00:00.000Z".into(),
            tags: [
                (STATUS, "ready"),
                (READY_SECONDS, "42"),
                (RELEASE, "c=\u{1b}[31mred"),
                (GROUP_TAG, "web"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        };
        let mut rows = vec![Row::of(&instance), row("i-1", Some("failed"), None, None)];
        order(&mut rows);
        let summary = summarize(&rows);
        assert_eq!(
            table(&rows, &summary),
            "\
INSTANCE  GROUP  AZ          STATE    STATUS  RELEASE               READY  LAUNCHED
i-1       web    us-east-1a  running  failed  -                     -      2026-12-06T10:00:01Z
i-0abc    web    us-east-1b  running  ready   c=\\u{1b}\\u{5b}31mred  42s    2026-12-06T10:00:00.000Z
2 instances: 1 failed, 1 ready; ready p50 42s, max 42s; 0 not on the majority release c=\\u{1b}\\u{5b}31mred
"
        );
        let bad = Instance {
            tags: [(READY_SECONDS.to_string(), "4 2".to_string())].into(),
            ..instance
        };
        assert_eq!(Row::of(&bad).ready_seconds, None);
    }

    #[test]
    fn an_objects_body_is_shown_escaped_chunk_by_chunk_and_bounded() {
        // (chunks, the bound, what is shown, whether it was cut)
        let cases: [(&[&[u8]], usize, &str, bool); 8] = [
            (&[b"the sync failed\n"], 100, "the sync failed\n", false),
            (
                &[b"a\x1b[2Jb\r\n\tc"],
                100,
                "a\\u{1b}[2Jb\\u{d}\n\tc",
                false,
            ),
            // A character split between two chunks is one character.
            (
                &["é".as_bytes()[..1].as_ref(), &"é".as_bytes()[1..]],
                100,
                "\\u{e9}",
                false,
            ),
            (&[b"x\xe2\x80", b"\xaey"], 100, "x\\u{202e}y", false),
            // A byte that is no UTF-8, and a character the object cut short.
            (
                &[b"a\xffb", b"\xe2\x80"],
                100,
                "a\\u{fffd}b\\u{fffd}",
                false,
            ),
            // The bound: the first bytes only, and said.
            (&[b"0123", b"4567", b"89"], 6, "012345", true),
            (&[b"012345"], 6, "012345", false),
            (&[b"012345", b"6"], 6, "012345", true),
        ];
        for (chunks, max, expected, cut) in cases {
            let mut excerpt = Excerpt::new(max);
            let mut shown = String::new();
            let mut more = true;
            for chunk in chunks {
                let (text, again) = excerpt.feed(chunk);
                shown += &text;
                more = again;
                if !more {
                    break;
                }
            }
            shown += &excerpt.finish();
            assert_eq!((shown.as_str(), !more), (expected, cut), "{chunks:?}");
        }
    }

    #[test]
    fn the_newest_boot_is_the_last_failed_one() {
        let objects = |pairs: &[(&str, i64)]| -> Vec<(String, i64)> {
            pairs.iter().map(|(k, t)| (k.to_string(), *t)).collect()
        };
        let before = "boot-logs/i-1/";
        let cases = [
            (objects(&[]), None),
            (
                objects(&[
                    ("boot-logs/i-1/aaa/journal.log", 100),
                    ("boot-logs/i-1/aaa/status.json", 101),
                    ("boot-logs/i-1/bbb/journal.log", 200),
                    ("boot-logs/i-1/loose", 900),
                    ("boot-logs/i-10/ccc/journal.log", 999),
                ]),
                Some("bbb"),
            ),
            (
                objects(&[
                    ("boot-logs/i-1/bbb/journal.log", 100),
                    ("boot-logs/i-1/aaa/journal.log", 100),
                ]),
                Some("aaa"),
            ),
        ];
        for (listed, expected) in cases {
            assert_eq!(
                latest_boot(&listed, before).as_deref(),
                expected,
                "{listed:?}"
            );
        }
    }
}
