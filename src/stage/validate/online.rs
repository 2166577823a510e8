//! `bootstage validate --online`: after the offline checks pass, ask AWS, with whatever
//! credentials the caller has (an instance's role, an operator's or CI's keys), whether
//! each thing the user-data names exists and may be read. Metadata calls only: nothing is
//! written, no parameter or secret value is fetched, and only names are printed.
//!
//! - An SSM reference: `ssm:DescribeParameters` filtered by its name (a SecureString's
//!   value is never fetched, so KMS is not asked; a `:VERSION`/`:LABEL` suffix is checked
//!   at boot).
//! - A Secrets Manager reference: `secretsmanager:DescribeSecret`, and its `version_id` or
//!   `version_stage` (else `AWSCURRENT`) among the secret's versions; a `json_key` is
//!   checked at boot.
//! - An import: `ssm:DescribeParameters` filtered by its path (`Recursive` or
//!   `OneLevel`), the parameters under it counted.
//! - A sync source: `s3:ListObjectsV2` (one key) on a prefix, `s3:HeadObject` on an
//!   archive, the local disk for `file://`; empty or missing is a failure unless the entry
//!   has `allow_empty`.
//! - The lifecycle hook, when `bootstage.lifecycle.asg.group` names the group:
//!   `autoscaling:DescribeAutoScalingGroups`, then `DescribeLifecycleHooks`.
//! - The watch queue: `sqs:GetQueueAttributes` on its URL, unless a placeholder makes it
//!   one instance's own (checked on that instance).
//!
//! One line per check on stdout: `ok   WHAT`, `skip WHAT: WHY`, `FAIL WHAT: WHY`. The
//! exit code is the first failure's: 77 refused, 66 missing, 75 unreachable (or no answer
//! within `--timeout`), 65 a request the service calls invalid.

use std::time::Duration;

use aws_sdk_ssm::types::ParameterStringFilter;
use futures_util::StreamExt;

use crate::aws::{self, Aws, Failure, Kind, credentials};
use crate::base::exit::ExitCode;
use crate::base::retry::{self, Deadline};
use crate::events::Queue;
use crate::secrets::{arn_region, refs};
use crate::settings::lifecycle::AsgConfig;
use crate::settings::{Bootstage, Import, SyncSpec};
use crate::sync::source::Location;

/// Checks in flight at once.
const CONCURRENCY: usize = 4;

/// How one check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Skipped,
    Refused,
    Missing,
    Unreachable,
    Invalid,
}

impl Verdict {
    /// The exit code a failure of this kind ends `validate --online` with.
    pub fn exit_code(self) -> ExitCode {
        match self {
            Verdict::Ok | Verdict::Skipped => ExitCode::Ok,
            Verdict::Refused => ExitCode::NoPerm,
            Verdict::Missing => ExitCode::NoInput,
            Verdict::Unreachable => ExitCode::TempFail,
            Verdict::Invalid => ExitCode::BadUserData,
        }
    }
}

/// One check's line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub what: String,
    pub verdict: Verdict,
    /// For a failure or a skip: why; for a pass: an optional note (never a value).
    pub why: Option<String>,
}

impl Outcome {
    fn ok(what: &str, note: Option<String>) -> Outcome {
        Outcome {
            what: what.to_string(),
            verdict: Verdict::Ok,
            why: note,
        }
    }

    fn of(what: &str, verdict: Verdict, why: impl Into<String>) -> Outcome {
        Outcome {
            what: what.to_string(),
            verdict,
            why: Some(why.into()),
        }
    }

    /// An AWS failure: `missing` lists the service's codes for "no such thing".
    fn failed(what: &str, failure: &Failure, missing: &[&str]) -> Outcome {
        let verdict = match failure.kind {
            _ if failure.is(missing) => Verdict::Missing,
            Kind::Refused => Verdict::Refused,
            Kind::Throttled | Kind::Transient => Verdict::Unreachable,
            Kind::Permanent => Verdict::Invalid,
        };
        Outcome::of(what, verdict, failure.why())
    }

    pub fn line(&self) -> String {
        let tag = match self.verdict {
            Verdict::Ok => "ok  ",
            Verdict::Skipped => "skip",
            _ => "FAIL",
        };
        match &self.why {
            Some(why) => format!("{tag} {}: {why}", self.what),
            None => format!("{tag} {}", self.what),
        }
    }
}

/// The exit code of a list of outcomes: the first failure's.
pub fn exit_code(outcomes: &[Outcome]) -> ExitCode {
    outcomes
        .iter()
        .map(|o| o.verdict.exit_code())
        .find(|c| *c != ExitCode::Ok)
        .unwrap_or(ExitCode::Ok)
}

/// One thing to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Task {
    Ssm {
        name: String,
        users: Vec<String>,
    },
    Secret {
        id: String,
        version_id: Option<String>,
        version_stage: Option<String>,
        users: Vec<String>,
    },
    Import(Import),
    Sync(SyncSpec),
    Hook(AsgConfig),
    Queue(String),
}

impl Task {
    /// How the line names it: what user-data wrote, and where.
    pub fn what(&self) -> String {
        let users = |users: &[String]| format!(" ({})", users.join(", "));
        match self {
            Task::Ssm { name, users: u } => format!("SSM parameter {name:?}{}", users(u)),
            Task::Secret {
                id,
                version_id,
                version_stage,
                users: u,
            } => {
                let target = refs::Target::Secret {
                    id: id.clone(),
                    version_id: version_id.clone(),
                    version_stage: version_stage.clone(),
                    json_key: None,
                };
                format!("{}{}", target.describe(), users(u))
            }
            Task::Import(import) => format!("import {:?}", import.ssm_path),
            Task::Sync(spec) => match Location::parse(&spec.from) {
                Ok(Location::S3 { .. }) => format!("S3 prefix {:?}", spec.from),
                Ok(Location::S3Archive { .. }) => format!("S3 archive {:?}", spec.from),
                Ok(Location::Dir { .. }) => format!("directory {:?}", spec.from),
                Ok(Location::FileArchive { .. }) => format!("archive {:?}", spec.from),
                Err(_) => format!("sync source {:?}", spec.from),
            },
            Task::Hook(asg) => match &asg.group {
                Some(group) => format!(
                    "lifecycle hook {:?} of group {group:?}",
                    asg.hook.as_deref().unwrap_or_default()
                ),
                None => format!(
                    "lifecycle hook {:?}",
                    asg.hook.as_deref().unwrap_or_default()
                ),
            },
            Task::Queue(url) => format!("SQS queue {url:?}"),
        }
    }

    /// The AWS services this check calls (their endpoint names), none for a local one.
    fn services(&self) -> &'static [&'static str] {
        match self {
            Task::Ssm { .. } | Task::Import(_) => &["SSM"],
            Task::Secret { .. } => &["SECRETS_MANAGER"],
            Task::Sync(spec) => match Location::parse(&spec.from) {
                Ok(Location::S3 { .. } | Location::S3Archive { .. }) => &["S3"],
                _ => &[],
            },
            Task::Hook(AsgConfig { group: Some(_), .. }) => &["AUTO_SCALING"],
            Task::Queue(url) if !url.contains('{') => &["SQS"],
            Task::Hook(_) | Task::Queue(_) => &[],
        }
    }
}

/// Every check the user-data asks for, in order: references (one per target), imports,
/// sync sources, the lifecycle hook, the watch queue. `settings` were read with each
/// reference inside them replaced by `placeholder`.
pub fn tasks(references: &[refs::Reference], settings: &Bootstage, placeholder: &str) -> Vec<Task> {
    let mut tasks: Vec<Task> = Vec::new();
    for reference in references {
        let user = refs::dotted(&reference.path);
        let (id_of, version) = match &reference.target {
            refs::Target::Ssm { name } => (name.clone(), None),
            refs::Target::Secret {
                id,
                version_id,
                version_stage,
                ..
            } => (
                id.clone(),
                Some((version_id.clone(), version_stage.clone())),
            ),
        };
        let same = tasks.iter_mut().find_map(|task| match (task, &version) {
            (Task::Ssm { name, users }, None) if *name == id_of => Some(users),
            (
                Task::Secret {
                    id,
                    version_id,
                    version_stage,
                    users,
                },
                Some((vid, stage)),
            ) if *id == id_of && version_id == vid && version_stage == stage => Some(users),
            _ => None,
        });
        match (same, version) {
            (Some(users), _) => users.push(user),
            (None, None) => tasks.push(Task::Ssm {
                name: id_of,
                users: vec![user],
            }),
            (None, Some((version_id, version_stage))) => tasks.push(Task::Secret {
                id: id_of,
                version_id,
                version_stage,
                users: vec![user],
            }),
        }
    }
    tasks.extend(settings.import.iter().cloned().map(Task::Import));
    tasks.extend(settings.sync.iter().map(|spec| {
        let mut spec = spec.clone();
        if spec.from == placeholder {
            spec.from = "(a reference)".into();
        }
        Task::Sync(spec)
    }));
    // The launch hook (a group with only a termination hook has none to check here).
    if let Some(asg) = settings
        .lifecycle
        .as_ref()
        .and_then(|l| l.asg.clone())
        .filter(|a| a.hook.is_some())
    {
        tasks.push(Task::Hook(asg));
    }
    if let Some(url) = settings.watch.as_ref().and_then(|w| w.sqs.clone()) {
        tasks.push(Task::Queue(url));
    }
    tasks
}

/// Why the online checks cannot start at all.
#[derive(Debug, thiserror::Error)]
pub enum OnlineError {
    #[error(
        "validate --online needs an AWS region: set AWS_REGION (it runs off the instance, so it does not ask IMDS)"
    )]
    NoRegion,
    #[error(transparent)]
    Aws(#[from] aws::AwsError),
}

impl crate::base::exit::ExitStatus for OnlineError {
    fn exit_code(&self) -> ExitCode {
        match self {
            OnlineError::NoRegion => ExitCode::Usage,
            OnlineError::Aws(e) => e.exit_code(),
        }
    }
}

/// Runs every check within `timeout`, printing each line as its turn comes.
pub async fn check(tasks: Vec<Task>, timeout: Duration) -> Result<Vec<Outcome>, OnlineError> {
    let deadline = Deadline::after(timeout);
    let mut services: Vec<&'static str> = Vec::new();
    for task in &tasks {
        for service in task.services() {
            if !services.contains(service) {
                services.push(service);
            }
        }
    }
    let aws = match services.first() {
        None => None,
        Some(&first) => {
            // Off the instance there is no instance region to fall back on.
            let aws = match Aws::load(None, &services, timeout).await {
                Err(aws::AwsError::NoRegion) => return Err(OnlineError::NoRegion),
                other => other?,
            };
            credentials::check(&aws, first, credentials::WAIT.min(deadline.remaining())).await?;
            Some(aws)
        }
    };
    let mut outcomes = Vec::with_capacity(tasks.len());
    let mut done = futures_util::stream::iter(tasks.into_iter().map(|task| {
        let aws = aws.as_ref();
        async move { run(aws, &task, deadline).await }
    }))
    .buffered(CONCURRENCY);
    while let Some(outcome) = done.next().await {
        println!("{}", outcome.line());
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

async fn run(aws: Option<&Aws>, task: &Task, deadline: Deadline) -> Outcome {
    let what = task.what();
    let Some(aws) = aws.filter(|_| !task.services().is_empty()) else {
        return local(task, &what);
    };
    match task {
        Task::Ssm { name, .. } => ssm_parameter(aws, &what, name, deadline).await,
        Task::Secret {
            id,
            version_id,
            version_stage,
            ..
        } => secret(aws, &what, id, version_id, version_stage, deadline).await,
        Task::Import(import) => ssm_path(aws, &what, import, deadline).await,
        Task::Sync(spec) => s3(aws, &what, spec, deadline).await,
        Task::Hook(asg) => hook(aws, &what, asg, deadline).await,
        Task::Queue(url) => queue(aws, &what, url, deadline).await,
    }
}

/// The checks that need no AWS call.
fn local(task: &Task, what: &str) -> Outcome {
    match task {
        Task::Sync(spec) => match Location::parse(&spec.from) {
            Ok(Location::Dir { root }) => local_source(what, &root, true, spec.allow_empty),
            Ok(Location::FileArchive { path, .. }) => {
                local_source(what, &path, false, spec.allow_empty)
            }
            _ => Outcome::of(
                what,
                Verdict::Skipped,
                "a reference in bootstage.sync: its URL is known only at boot",
            ),
        },
        Task::Hook(_) => Outcome::of(
            what,
            Verdict::Skipped,
            "no group named: the instance finds its own (its tag, or DescribeAutoScalingInstances)",
        ),
        Task::Queue(url) if url.contains("{instance_id}") => {
            Outcome::of(what, Verdict::Skipped, "names a per-instance queue")
        }
        Task::Queue(_) => Outcome::of(
            what,
            Verdict::Skipped,
            "its placeholders are filled in from the instance's facts",
        ),
        _ => Outcome::of(what, Verdict::Skipped, "needs no check"),
    }
}

/// A `file://` directory or archive, on this machine's disk.
fn local_source(what: &str, path: &std::path::Path, dir: bool, allow_empty: bool) -> Outcome {
    let opened = match dir {
        true => std::fs::read_dir(path).map(|_| ()),
        false => std::fs::File::open(path).and_then(|f| match f.metadata()?.is_file() {
            true => Ok(()),
            false => Err(std::io::Error::other("not a plain file")),
        }),
    };
    match opened {
        Ok(()) => Outcome::ok(what, None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && allow_empty => Outcome::ok(
            what,
            Some("does not exist here (allow_empty: an empty tree)".into()),
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Outcome::of(what, Verdict::Missing, format!("does not exist here ({e})"))
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            Outcome::of(what, Verdict::Refused, e.to_string())
        }
        Err(e) => Outcome::of(what, Verdict::Invalid, e.to_string()),
    }
}

/// The values DescribeParameters' Name filter takes for a reference (a name, or an ARN
/// with or without a version or label), and whether it had a version or label.
fn ssm_names(reference: &str) -> (Vec<String>, bool) {
    let (name, selector) = match reference.strip_prefix("arn:") {
        Some(rest) => {
            let resource = rest.splitn(5, ':').nth(4).unwrap_or_default();
            let (resource, selector) = match resource.split_once(':') {
                Some((resource, _)) => (resource, true),
                None => (resource, false),
            };
            let name = resource.strip_prefix("parameter").unwrap_or(resource);
            (name.to_string(), selector)
        }
        None => match reference.split_once(':') {
            Some((name, _)) => (name.to_string(), true),
            None => (reference.to_string(), false),
        },
    };
    // An ARN's `parameter/NAME` does not say whether a name of one segment began with `/`.
    let mut names = vec![name.clone()];
    if reference.starts_with("arn:") && name.matches('/').count() == 1 {
        names.push(name.trim_start_matches('/').to_string());
    }
    (names, selector)
}

const SSM_MISSING: &[&str] = &["ParameterNotFound", "ParameterVersionNotFound"];

async fn ssm_parameter(aws: &Aws, what: &str, reference: &str, deadline: Deadline) -> Outcome {
    let (names, selector) = ssm_names(reference);
    let region = arn_region(reference).unwrap_or(aws.region());
    let filter = match ParameterStringFilter::builder()
        .key("Name")
        .option("Equals")
        .set_values(Some(names))
        .build()
    {
        Ok(filter) => filter,
        Err(e) => return Outcome::of(what, Verdict::Invalid, e.to_string()),
    };
    match describe_parameters(aws, region, filter, deadline, true).await {
        Ok(0) => Outcome::of(
            what,
            Verdict::Missing,
            "does not exist (or is not visible to these credentials)",
        ),
        Ok(_) if selector => Outcome::ok(
            what,
            Some("exists; its version or label is checked at boot".into()),
        ),
        Ok(_) => Outcome::ok(what, None),
        Err(f) => Outcome::failed(what, &f, SSM_MISSING),
    }
}

async fn ssm_path(aws: &Aws, what: &str, import: &Import, deadline: Deadline) -> Outcome {
    let path = match import.ssm_path.trim_end_matches('/') {
        "" => "/",
        path => path,
    };
    let option = match import.recursive {
        true => "Recursive",
        false => "OneLevel",
    };
    let filter = match ParameterStringFilter::builder()
        .key("Path")
        .option(option)
        .values(path)
        .build()
    {
        Ok(filter) => filter,
        Err(e) => return Outcome::of(what, Verdict::Invalid, e.to_string()),
    };
    match describe_parameters(aws, aws.region(), filter, deadline, false).await {
        Ok(n) => Outcome::ok(
            what,
            Some(format!(
                "{n} parameter{} ({})",
                if n == 1 { "" } else { "s" },
                match import.recursive {
                    true => "recursive",
                    false => "one level",
                }
            )),
        ),
        Err(f) => Outcome::failed(what, &f, SSM_MISSING),
    }
}

/// How many parameters DescribeParameters lists under `filter`, every page read (a page
/// may be empty with more to come); with `first`, stops at the first one found.
async fn describe_parameters(
    aws: &Aws,
    region: &str,
    filter: ParameterStringFilter,
    deadline: Deadline,
    first: bool,
) -> Result<usize, Failure> {
    let client = aws.ssm(region);
    let mut count = 0;
    let mut token: Option<String> = None;
    loop {
        let page = aws::call(
            "SSM",
            "ssm:DescribeParameters",
            retry::THROTTLED,
            deadline,
            || {
                client
                    .describe_parameters()
                    .parameter_filters(filter.clone())
                    .max_results(50)
                    .set_next_token(token.clone())
                    .send()
            },
        )
        .await?;
        count += page.parameters().len();
        token = page.next_token().map(str::to_string);
        if token.is_none() || (first && count > 0) {
            return Ok(count);
        }
    }
}

async fn secret(
    aws: &Aws,
    what: &str,
    id: &str,
    version_id: &Option<String>,
    version_stage: &Option<String>,
    deadline: Deadline,
) -> Outcome {
    let region = arn_region(id).unwrap_or(aws.region());
    let client = aws.secretsmanager(region);
    let answer = aws::call(
        "Secrets Manager",
        "secretsmanager:DescribeSecret",
        retry::THROTTLED,
        deadline,
        || client.describe_secret().secret_id(id).send(),
    )
    .await;
    let answer = match answer {
        Ok(answer) => answer,
        Err(f) => return Outcome::failed(what, &f, &["ResourceNotFoundException"]),
    };
    if answer.deleted_date().is_some() {
        return Outcome::of(what, Verdict::Missing, "is scheduled for deletion");
    }
    // The version GetSecretValue will ask for, when the answer lists the versions.
    if let Some(versions) = answer.version_ids_to_stages() {
        let stage = match (version_id, version_stage) {
            (None, None) => Some("AWSCURRENT"),
            (_, stage) => stage.as_deref(),
        };
        if let Some(v) = version_id
            && !versions.contains_key(v)
        {
            return Outcome::of(what, Verdict::Missing, format!("has no version {v:?}"));
        }
        let has_stage = |s: &str| {
            versions.iter().any(|(v, stages)| {
                version_id.as_ref().is_none_or(|want| want == v) && stages.iter().any(|x| x == s)
            })
        };
        if let Some(stage) = stage
            && !has_stage(stage)
        {
            return Outcome::of(
                what,
                Verdict::Missing,
                format!("has no version in stage {stage:?}"),
            );
        }
    }
    Outcome::ok(what, None)
}

async fn s3(aws: &Aws, what: &str, spec: &SyncSpec, deadline: Deadline) -> Outcome {
    let client = aws.s3();
    match Location::parse(&spec.from) {
        Ok(Location::S3 { bucket, prefix }) => {
            let listed = aws::call("S3", "s3:ListObjectsV2", retry::THROTTLED, deadline, || {
                client
                    .list_objects_v2()
                    .bucket(&bucket)
                    .prefix(&prefix)
                    .max_keys(1)
                    .send()
            })
            .await;
            match listed {
                Ok(page) if !page.contents().is_empty() => Outcome::ok(what, None),
                Ok(_) if spec.allow_empty => {
                    Outcome::ok(what, Some("empty (allow_empty: an empty tree)".into()))
                }
                Ok(_) => Outcome::of(what, Verdict::Missing, "no object under this prefix"),
                Err(f) => Outcome::failed(what, &f, &["NoSuchBucket"]),
            }
        }
        Ok(Location::S3Archive { bucket, key, .. }) => {
            let head = aws::call("S3", "s3:HeadObject", retry::THROTTLED, deadline, || {
                client.head_object().bucket(&bucket).key(&key).send()
            })
            .await;
            const MISSING: &[&str] = &["NotFound", "NoSuchKey", "NoSuchBucket"];
            match head {
                Ok(_) => Outcome::ok(what, None),
                Err(f) if f.is(MISSING) && spec.allow_empty => Outcome::ok(
                    what,
                    Some("does not exist (allow_empty: an empty tree)".into()),
                ),
                Err(f) if f.is(MISSING) => {
                    Outcome::of(what, Verdict::Missing, "no such object (HeadObject: 404)")
                }
                Err(f) => Outcome::failed(what, &f, MISSING),
            }
        }
        _ => local(&Task::Sync(spec.clone()), what),
    }
}

async fn hook(aws: &Aws, what: &str, asg: &AsgConfig, deadline: Deadline) -> Outcome {
    let Some(group) = &asg.group else {
        return local(&Task::Hook(asg.clone()), what);
    };
    let client = aws.autoscaling();
    let groups = aws::call(
        "Auto Scaling",
        "autoscaling:DescribeAutoScalingGroups",
        retry::THROTTLED,
        deadline,
        || {
            client
                .describe_auto_scaling_groups()
                .auto_scaling_group_names(group)
                .send()
        },
    )
    .await;
    match groups {
        Ok(answer) if answer.auto_scaling_groups().is_empty() => {
            return Outcome::of(what, Verdict::Missing, "no such auto scaling group");
        }
        Ok(_) => {}
        Err(f) => return Outcome::failed(what, &f, &[]),
    }
    let hooks = aws::call(
        "Auto Scaling",
        "autoscaling:DescribeLifecycleHooks",
        retry::THROTTLED,
        deadline,
        || {
            client
                .describe_lifecycle_hooks()
                .auto_scaling_group_name(group)
                .lifecycle_hook_names(asg.hook.as_deref().unwrap_or_default())
                .send()
        },
    )
    .await;
    match hooks {
        Ok(answer) => match answer
            .lifecycle_hooks()
            .iter()
            .find(|h| h.lifecycle_hook_name() == asg.hook.as_deref())
        {
            None => Outcome::of(what, Verdict::Missing, "the group has no hook of this name"),
            Some(h) if h.lifecycle_transition() != Some("autoscaling:EC2_INSTANCE_LAUNCHING") => {
                Outcome::of(
                    what,
                    Verdict::Invalid,
                    format!(
                        "is not a launch hook (its transition: {})",
                        h.lifecycle_transition().unwrap_or("none")
                    ),
                )
            }
            Some(_) => Outcome::ok(what, None),
        },
        Err(f) => Outcome::failed(what, &f, &[]),
    }
}

async fn queue(aws: &Aws, what: &str, url: &str, deadline: Deadline) -> Outcome {
    use aws_sdk_sqs::types::QueueAttributeName;
    let client = aws.sqs(Queue::region_of(url).as_deref());
    let answer = aws::call(
        "SQS",
        "sqs:GetQueueAttributes",
        retry::THROTTLED,
        deadline,
        || {
            client
                .get_queue_attributes()
                .queue_url(url)
                .attribute_names(QueueAttributeName::QueueArn)
                .send()
        },
    )
    .await;
    match answer {
        Ok(_) => Outcome::ok(what, None),
        Err(f) => Outcome::failed(
            what,
            &f,
            &[
                "QueueDoesNotExist",
                "AWS.SimpleQueueService.NonExistentQueue",
            ],
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssm_names_strip_arns_and_selectors() {
        let cases = [
            ("/shop/db", (vec!["/shop/db"], false)),
            ("/shop/db:3", (vec!["/shop/db"], true)),
            ("plain", (vec!["plain"], false)),
            (
                "arn:aws:ssm:eu-west-1:123:parameter/shop/db",
                (vec!["/shop/db"], false),
            ),
            (
                "arn:aws:ssm:eu-west-1:123:parameter/shop/db:live",
                (vec!["/shop/db"], true),
            ),
            (
                "arn:aws:ssm:eu-west-1:123:parameter/plain",
                (vec!["/plain", "plain"], false),
            ),
        ];
        for (reference, (names, selector)) in cases {
            let names: Vec<String> = names.into_iter().map(str::to_string).collect();
            assert_eq!(ssm_names(reference), (names, selector), "{reference}");
        }
    }

    #[test]
    fn the_first_failure_decides_the_exit_code() {
        let o = |verdict| Outcome {
            what: "x".into(),
            verdict,
            why: None,
        };
        use Verdict::*;
        let cases = [
            (vec![], ExitCode::Ok),
            (vec![o(Ok), o(Skipped)], ExitCode::Ok),
            (vec![o(Ok), o(Missing), o(Refused)], ExitCode::NoInput),
            (vec![o(Refused), o(Missing)], ExitCode::NoPerm),
            (vec![o(Skipped), o(Unreachable)], ExitCode::TempFail),
            (vec![o(Invalid), o(Unreachable)], ExitCode::BadUserData),
        ];
        for (outcomes, code) in cases {
            assert_eq!(exit_code(&outcomes), code, "{outcomes:?}");
        }
        let failure = Failure::new(Kind::Refused, Some("NoSuchBucket"), "NoSuchBucket: gone");
        let outcome = Outcome::failed("S3 prefix \"s3://b/p/\"", &failure, &["NoSuchBucket"]);
        assert_eq!(outcome.verdict, Missing);
        assert_eq!(
            outcome.line(),
            "FAIL S3 prefix \"s3://b/p/\": NoSuchBucket: gone"
        );
        assert_eq!(Outcome::ok("w", None).line(), "ok   w");
    }
}
