//! The command line: one binary, one subcommand per stage. The only module that knows
//! clap: each subcommand's arguments convert into that stage's own `Settings`, whose
//! module keeps the defaults shown here.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::base::duration;
use crate::stage::{
    fleet, hooks, image, in_service, launch, lifecycle, metadata, notice, query, rollback, s3sync,
    status, validate,
};
use crate::state;

#[derive(Debug, Parser)]
#[command(
    name = "bootstage",
    version,
    about = "Boot-time instance configuration: parameters from IMDS, config from S3, then the app, in systemd order."
)]
pub struct Cli {
    /// Where stages keep their outputs.
    #[arg(long, global = true, env = "BOOTSTAGE_STATE_DIR", default_value = state::DEFAULT_DIR, value_name = "DIR")]
    pub state_dir: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Fetch user-data and facts from IMDS; write params.json, instance.json, params.env.
    Metadata(MetadataArgs),
    /// Sync config and code from S3 (or a directory) into local directories, atomically.
    #[command(name = "s3-sync")]
    S3Sync(SyncArgs),
    /// Run the boot hooks: per-instance.d once per instance id, then per-boot.d.
    Hooks(HooksArgs),
    /// Load params.env into the environment and exec the app (after any missing stage).
    Launch(LaunchArgs),
    /// Put the instance into service: wait while it is in an auto scaling warm pool
    /// (Warmed:*), then, if it waited, read the parameters and sync again and complete the
    /// launch action of leaving the pool; run per-start.d. Apps start after it
    /// (bootstage-in-service.target).
    #[command(name = "in-service")]
    InService(InServiceArgs),
    /// Where the boot stands: each stage's state, last error and timings.
    ///
    /// Exit status: 0 every stage done (or bootstage disabled), 1 a stage failed, 2 a stage
    /// is pending or running (with --wait: only 0 or 1).
    Status(StatusArgs),
    /// Print one value of the parameters or facts (a dotted path), or all of them.
    ///
    /// KEY is a path into {"params": …, "instance": …}: instance.region,
    /// params.app.port, or just app.port (read under params); numbers index lists.
    /// Exit status: 1 when there is no such key.
    Query(QueryArgs),
    /// Send the failure or ready notice configured in bootstage.notify, then tell the
    /// auto scaling group and CloudFormation (bootstage.lifecycle).
    Notify(NotifyArgs),
    /// The auto scaling launch hook and CloudFormation signal (bootstage.lifecycle).
    Lifecycle(LifecycleArgs),
    /// Check user-data offline, as the metadata stage would read it: decoding, references,
    /// every bootstage.* setting. Prints the variable names it would export (never a
    /// value). With --online, also asks AWS whether each parameter, secret, import, sync
    /// source, lifecycle hook and queue named exists and may be read (metadata only).
    /// Exit status: 0 valid, 65 not; with --online, the first failed check's: 77 refused,
    /// 66 missing, 75 unreachable.
    Validate(ValidateArgs),
    /// End the hold on a failed instance now: abandon it (the group replaces it) or, with
    /// --continue, put it in service.
    Release(ReleaseArgs),
    /// Ready this instance to be captured as an image, so every instance of the image
    /// boots as a first boot (`image prepare`).
    Image(ImageArgs),
    /// Swap a synced destination back to its previous kept generation (or --to one), run
    /// --on-change, and hold it there: the watcher does not swap in the version rolled
    /// back from again until the source holds another one (or --clear).
    ///
    /// Exit status: 0 done, 66 no generation to roll back to, 73 the destination cannot
    /// be written.
    Rollback(RollbackArgs),
    /// List a synced destination's kept generations: source, version, time and state
    /// (current, previous, failed, rolled-back), and a rollback's pin.
    Generations(GenerationsArgs),
    /// List the fleet's instances as their bootstage:status tags say (bootstage.report.tags):
    /// one line each (id, group, AZ, state, status, release, ready seconds, launch time),
    /// failures first, then a summary. Run anywhere with credentials that may call
    /// ec2:DescribeInstances. With --logs INSTANCE, print the forensics its last failed
    /// boot uploaded (bootstage.report.logs) instead.
    Fleet(FleetArgs),
}

#[derive(Debug, Clone, Args)]
pub struct FleetArgs {
    /// Only the instances of this auto scaling group (else every instance with a
    /// bootstage:status tag).
    #[arg(long, value_name = "NAME")]
    pub group: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Print the forensics of this instance's last failed boot.
    #[arg(long, value_name = "INSTANCE")]
    pub logs: Option<String>,
    /// Where the forensics are, as bootstage.report.logs says it
    /// (s3://bucket/boot-logs/{instance_id}/{boot_id}/).
    #[arg(long, env = "BOOTSTAGE_LOGS_PREFIX", value_name = "S3_PREFIX")]
    pub logs_prefix: Option<String>,
    /// Give up after this long.
    #[arg(long, value_parser = duration::parse, default_value = fleet::DEFAULT_TIMEOUT, value_name = "DURATION")]
    pub timeout: Duration,
    /// Instances per DescribeInstances page (5 to 1000; for tests).
    #[arg(long, hide = true, default_value_t = fleet::DEFAULT_PAGE, value_parser = clap::value_parser!(u32).range(5..=1000))]
    pub page_size: u32,
}

impl From<FleetArgs> for fleet::Settings {
    fn from(a: FleetArgs) -> Self {
        fleet::Settings {
            group: a.group,
            json: a.json,
            logs: a.logs,
            logs_prefix: a.logs_prefix,
            page_size: a.page_size,
            timeout: a.timeout,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct RollbackArgs {
    /// The destination (a `to` of bootstage.sync).
    #[arg(value_name = "DEST")]
    pub dest: PathBuf,
    /// A kept generation (`gen-…`, as `bootstage generations DEST` lists them).
    #[arg(long, value_name = "GENERATION", conflicts_with = "clear")]
    pub to: Option<String>,
    /// End the hold of an earlier rollback instead: the next pass swaps in what the
    /// source holds.
    #[arg(long)]
    pub clear: bool,
    /// Run this command (via /bin/sh -c) after the swap, as the watcher's --on-change.
    #[arg(long, value_name = "CMD")]
    pub on_change: Option<String>,
    /// How long to wait for a running sync of DEST; bounds --on-change too.
    #[arg(long, value_parser = duration::parse, default_value = "60s", value_name = "DURATION")]
    pub timeout: Duration,
    /// The image's notice settings, used when the parameters have no bootstage.notify.
    #[arg(
        long = "notify-config",
        env = "BOOTSTAGE_NOTIFY_CONFIG",
        default_value = notice::DEFAULT_CONFIG,
        value_name = "PATH"
    )]
    pub notify_config: PathBuf,
}

impl From<RollbackArgs> for rollback::Settings {
    fn from(a: RollbackArgs) -> Self {
        rollback::Settings {
            dest: a.dest,
            to: a.to,
            clear: a.clear,
            on_change: a.on_change,
            timeout: a.timeout,
            notify: a.notify_config,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct GenerationsArgs {
    /// The destination (a `to` of bootstage.sync).
    #[arg(value_name = "DEST")]
    pub dest: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// How long to wait for a running sync of DEST.
    #[arg(long, value_parser = duration::parse, default_value = "60s", value_name = "DURATION")]
    pub timeout: Duration,
}

impl From<GenerationsArgs> for rollback::ListSettings {
    fn from(a: GenerationsArgs) -> Self {
        rollback::ListSettings {
            dest: a.dest,
            json: a.json,
            timeout: a.timeout,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    pub command: ImageCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum ImageCommand {
    /// Remove what must not travel in an image, printing one line for each path removed:
    /// the synced destinations the parameters name (their links and generations), the
    /// per-instance markers and all else in the lib dir, and the state dir (parameters,
    /// facts, env files, credentials, status, lifecycle, warm-pool and watch records).
    /// The last step before the image is captured.
    ///
    /// Refuses while a bootstage unit is busy (starting, stopping, or its process
    /// running: it would write its state back), unless --force. Exit status: 0 done, 75
    /// busy units, 73 something could not be removed or was left (said on stderr).
    Prepare(PrepareArgs),
}

#[derive(Debug, Clone, Args)]
pub struct PrepareArgs {
    /// Print what would be removed; remove nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Go on even while bootstage units are busy (what they write afterwards stays in the
    /// image).
    #[arg(long)]
    pub force: bool,

    /// Where per-instance markers are kept: instances/INSTANCE-ID/ in it.
    #[arg(long, env = "BOOTSTAGE_LIB_DIR", default_value = hooks::DEFAULT_LIB_DIR, value_name = "DIR")]
    pub lib_dir: PathBuf,

    /// The systemctl that lists the units (hidden: for tests).
    #[arg(long, hide = true, default_value = lifecycle::DEFAULT_SYSTEMCTL, value_name = "PATH")]
    pub systemctl: PathBuf,
}

impl From<PrepareArgs> for image::Settings {
    fn from(a: PrepareArgs) -> Self {
        image::Settings {
            dry_run: a.dry_run,
            force: a.force,
            lib_dir: a.lib_dir,
            systemctl: a.systemctl,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ValidateArgs {
    /// The user-data file (JSON, base64 or gzip, as EC2 would serve it); `-` or none:
    /// standard input.
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,

    /// Also check, with this machine's AWS credentials, that each SSM parameter, secret,
    /// import path and S3 source exists and is readable, and that the lifecycle hook and
    /// the watch queue exist (metadata calls only: nothing written, no value fetched).
    /// Needs AWS_REGION.
    #[arg(long)]
    pub online: bool,

    /// With --online: the bound on all of its AWS calls together.
    #[arg(long, requires = "online", default_value = validate::DEFAULT_TIMEOUT, value_parser = duration::parse, allow_hyphen_values = true, value_name = "DURATION")]
    pub timeout: Duration,
}

impl From<ValidateArgs> for validate::Settings {
    fn from(a: ValidateArgs) -> Self {
        validate::Settings {
            file: a.file,
            online: a.online,
            timeout: a.timeout,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct LifecycleConfig {
    /// Used when the parameters have no bootstage.lifecycle (e.g. the metadata stage failed).
    /// Before or after the subcommand: `lifecycle watch --lifecycle-config PATH` too.
    #[arg(
        long = "lifecycle-config",
        global = true,
        env = "BOOTSTAGE_LIFECYCLE_CONFIG",
        default_value = lifecycle::DEFAULT_CONFIG,
        value_name = "PATH"
    )]
    pub path: PathBuf,

    /// How long the watcher leaves a failed boot to the failure unit (hidden: for tests).
    #[arg(long, hide = true, default_value = lifecycle::DEFAULT_FAILURE_GRACE, value_parser = duration::parse, value_name = "DURATION")]
    pub failure_grace: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct LifecycleArgs {
    #[command(subcommand)]
    pub command: LifecycleCommand,

    #[command(flatten)]
    pub config: LifecycleConfig,
}

#[derive(Debug, Clone, Subcommand)]
pub enum LifecycleCommand {
    /// Keep the launch hook alive with heartbeats until it is completed or a hold ends;
    /// then, when a termination hook, drain settings or a later-life hook (drain.d,
    /// rebalance.d, rebalance-undo.d, maintenance.d) need it, watch IMDS for the
    /// instance's leaving and drain it (bootstage-lifecycle.service).
    Watch(WatchArgs),
    /// CONTINUE and SUCCESS now: for an app that signals after its own readiness check
    /// (bootstage.lifecycle.complete_on = "app"), e.g. in ExecStartPost=.
    Complete,
}

#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub dirs: HookDirs,

    /// IMDS base URL [default: AWS_EC2_METADATA_SERVICE_ENDPOINT, else by
    /// AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE, else http://169.254.169.254].
    #[arg(long, value_name = "URL")]
    pub imds_endpoint: Option<String>,

    /// Used when the parameters have no bootstage.notify, for the drain, rebalance and
    /// maintenance notices.
    #[arg(
        long = "notify-config",
        env = "BOOTSTAGE_NOTIFY_CONFIG",
        default_value = notice::DEFAULT_CONFIG,
        value_name = "PATH"
    )]
    pub notify_config: PathBuf,

    /// Between two looks at IMDS (hidden: for tests and the benchmark).
    #[arg(long, hide = true, default_value = lifecycle::DEFAULT_POLL, value_parser = duration::positive, value_name = "DURATION")]
    pub poll_every: Duration,

    /// The systemctl a drain stops units with (hidden: the integration tests, which run
    /// without systemd, give a double that records each stop; the boot test the real one).
    #[arg(long, hide = true, default_value = lifecycle::DEFAULT_SYSTEMCTL, value_name = "PATH")]
    pub systemctl: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct ReleaseArgs {
    /// Put the instance in service (CONTINUE, SUCCESS) instead of abandoning it.
    #[arg(long = "continue", conflicts_with = "abandon")]
    pub proceed: bool,

    /// Abandon the instance (ABANDON, FAILURE): the default.
    #[arg(long)]
    pub abandon: bool,

    #[command(flatten)]
    pub config: LifecycleConfig,
}

#[derive(Debug, Clone, Args)]
pub struct HookDirs {
    /// Where the hooks are: per-instance.d/ and per-boot.d/ in it.
    #[arg(long, env = "BOOTSTAGE_HOOKS_DIR", default_value = hooks::DEFAULT_HOOKS_DIR, value_name = "DIR")]
    pub hooks_dir: PathBuf,

    /// Where per-instance markers are kept: instances/INSTANCE-ID/ in it.
    #[arg(long, env = "BOOTSTAGE_LIB_DIR", default_value = hooks::DEFAULT_LIB_DIR, value_name = "DIR")]
    pub lib_dir: PathBuf,

    /// Deadline for all hooks of one run together; keep it below the unit's TimeoutStartSec.
    #[arg(long, env = "BOOTSTAGE_HOOK_TIMEOUT", default_value = hooks::DEFAULT_HOOK_TIMEOUT, value_parser = duration::parse, allow_hyphen_values = true, value_name = "DURATION")]
    pub hook_timeout: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct HooksArgs {
    /// Re-run the metadata stage and every configured sync first, even if their outputs exist.
    #[arg(long)]
    pub refresh: bool,

    #[command(flatten)]
    pub dirs: HookDirs,

    #[command(
        flatten,
        next_help_heading = "Metadata (run first when its outputs are missing)"
    )]
    pub metadata: MetadataArgs,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Wait until every stage is done or one has failed.
    #[arg(long)]
    pub wait: bool,

    /// With --wait: give up after this long (exit 1).
    #[arg(long, default_value = status::DEFAULT_WAIT_TIMEOUT, value_parser = duration::parse, allow_hyphen_values = true, value_name = "DURATION")]
    pub timeout: Duration,

    /// Print JSON: {"state": …, "stages": [{"stage", "state", "started_at", …}]}.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub lifecycle: LifecycleConfig,
}

#[derive(Debug, Clone, Args)]
pub struct QueryArgs {
    /// A dotted path: app.port, params.app.port, instance.region, params.bootstage.sync.0.to.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub key: Option<String>,

    /// Print everything: {"params": …, "instance": …}.
    #[arg(long)]
    pub all: bool,

    /// Print strings as JSON too (quoted, escaped).
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum NotifyEvent {
    /// A unit failed (run from OnFailure=).
    Failure,
    /// bootstage.target was reached; sent only when bootstage.notify.ready is true.
    Ready,
}

#[derive(Debug, Clone, Args)]
pub struct NotifyArgs {
    pub event: NotifyEvent,

    /// The unit the notice is about (OnFailure=bootstage-failure@%n.service passes it).
    #[arg(long, value_name = "UNIT")]
    pub unit: Option<String>,

    /// Used when the parameters have no bootstage.notify (e.g. the metadata stage failed).
    #[arg(
        long,
        env = "BOOTSTAGE_NOTIFY_CONFIG",
        default_value = notice::DEFAULT_CONFIG,
        value_name = "PATH"
    )]
    pub config: PathBuf,

    #[command(flatten)]
    pub lifecycle: LifecycleConfig,

    /// Used when the parameters have no bootstage.report (e.g. the metadata stage failed).
    #[arg(
        long = "report-config",
        env = "BOOTSTAGE_REPORT_CONFIG",
        default_value = notice::report::DEFAULT_CONFIG,
        value_name = "PATH"
    )]
    pub report_config: PathBuf,

    /// The journalctl a failed boot's journal excerpt is read with (hidden: the
    /// integration tests, which run without systemd, give a script).
    #[arg(long, hide = true, default_value = notice::report::DEFAULT_JOURNALCTL, value_name = "PATH")]
    pub journalctl: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct MetadataArgs {
    /// IMDS base URL [default: AWS_EC2_METADATA_SERVICE_ENDPOINT, else by
    /// AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE, else http://169.254.169.254]; with
    /// --provider gcp, the metadata server's [default: GCE_METADATA_HOST, else
    /// http://metadata.google.internal]; azure: BOOTSTAGE_AZURE_IMDS, else
    /// http://169.254.169.254; openstack: BOOTSTAGE_OPENSTACK_METADATA, else
    /// http://169.254.169.254 (BOOTSTAGE_CONFIG_DRIVE=DIR reads a mounted config drive
    /// instead).
    #[arg(long, value_name = "URL")]
    pub imds_endpoint: Option<String>,

    /// Whose metadata service gives user-data and facts: aws, gcp, azure or openstack
    /// [default: BOOTSTAGE_PROVIDER, else from the DMI (sys_vendor, product_name,
    /// board_asset_tag, chassis_asset_tag), else aws].
    #[arg(long, value_name = "NAME")]
    pub provider: Option<String>,

    /// Where the DMI strings are read (hidden: the integration tests give their own).
    #[arg(long, hide = true, env = "BOOTSTAGE_DMI_DIR", default_value = crate::imds::provider::DMI_ROOT, value_name = "DIR")]
    pub dmi_dir: PathBuf,

    /// Refuse IMDSv1: fail if the endpoint offers no IMDSv2 token.
    #[arg(long, env = "BOOTSTAGE_IMDS_V2_ONLY")]
    pub imds_v2_only: bool,

    /// Overall deadline for the stage; keep it below the unit's TimeoutStartSec.
    #[arg(long, env = "BOOTSTAGE_TIMEOUT", default_value = metadata::DEFAULT_TIMEOUT, value_parser = duration::parse, allow_hyphen_values = true, value_name = "DURATION")]
    pub timeout: Duration,

    /// How long a missing user-data (404) counts as "not there yet" before it is final
    /// [default: 30s, or --timeout if shorter].
    #[arg(long, env = "BOOTSTAGE_USER_DATA_WAIT", value_parser = duration::parse, allow_hyphen_values = true, value_name = "DURATION")]
    pub user_data_wait: Option<Duration>,

    /// Bound on each HTTP request, connect included.
    #[arg(long, default_value = metadata::DEFAULT_REQUEST_TIMEOUT, value_parser = duration::parse, allow_hyphen_values = true, value_name = "DURATION")]
    pub request_timeout: Duration,

    /// Boot with empty parameters when the instance has no user-data.
    #[arg(long)]
    pub allow_empty: bool,

    /// Read user-data from a file instead of IMDS (a local VM; no cloud needed).
    #[arg(long, env = "BOOTSTAGE_USER_DATA_FILE", value_name = "PATH")]
    pub user_data_file: Option<PathBuf>,

    /// With --user-data-file: a fact IMDS would give, e.g. --fact region=eu-west-1.
    #[arg(long = "fact", value_name = "NAME=VALUE")]
    pub facts: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct InServiceArgs {
    /// Look once (after a resume from hibernation): go into service if the instance is
    /// there now, else exit 0 at once and leave it to the waiting unit.
    #[arg(long)]
    pub once: bool,

    #[command(flatten)]
    pub start: StartArgs,

    #[command(flatten, next_help_heading = "Hooks (per-start.d)")]
    pub hooks: HookDirs,

    #[command(
        flatten,
        next_help_heading = "Metadata (run first when its outputs are missing, and again on leaving a warm pool)"
    )]
    pub metadata: MetadataArgs,
}

/// How the instance goes into service (`in-service`, and `launch` before the app).
#[derive(Debug, Clone, Args)]
pub struct StartArgs {
    #[command(flatten)]
    pub lifecycle: LifecycleConfig,

    /// How often the target lifecycle state is read while in a warm pool.
    #[arg(long = "warm-poll", env = "BOOTSTAGE_WARM_POLL", default_value = in_service::DEFAULT_POLL, value_parser = duration::parse, hide = true, value_name = "DURATION")]
    pub poll: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct LaunchArgs {
    /// Re-run the metadata stage, every configured sync and the hooks first, even if done.
    #[arg(long)]
    pub refresh: bool,

    #[command(flatten, next_help_heading = "Hooks (run first unless done this boot)")]
    pub hooks: HookDirs,

    #[command(
        flatten,
        next_help_heading = "Metadata (run first when its outputs are missing)"
    )]
    pub metadata: MetadataArgs,

    #[command(flatten)]
    pub start: StartArgs,

    /// The app and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct SyncArgs {
    /// Sync this source (s3://BUCKET/PREFIX/, file:///DIR/, or one archive:
    /// s3://BUCKET/KEY.tar.zst, .tar.gz, .tgz, .tar) instead of the parameters'
    /// `bootstage.sync` list. The metadata stage runs first only if a metadata flag below
    /// (--user-data-file, --fact …) or --refresh is given.
    #[arg(long, requires = "to", value_name = "URL")]
    pub from: Option<String>,

    /// Destination for --from: a path that becomes a symlink to the synced tree.
    #[arg(long, requires = "from", value_name = "DIR")]
    pub to: Option<PathBuf>,

    /// With --from naming an archive: the SHA-256 (64 hex digits) it must have.
    #[arg(long, requires = "from", value_name = "HEX")]
    pub sha256: Option<String>,

    /// With --from: an empty prefix (or a missing archive) syncs an empty tree instead of
    /// failing with 66.
    #[arg(long, requires = "from")]
    pub allow_empty_source: bool,

    /// Downloads in flight at once, per destination.
    #[arg(long, default_value_t = s3sync::DEFAULT_CONCURRENCY, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,

    /// Overall deadline for one sync pass; keep it below the unit's TimeoutStartSec.
    #[arg(long, default_value = s3sync::DEFAULT_SYNC_TIMEOUT, value_parser = duration::parse, allow_hyphen_values = true, value_name = "DURATION")]
    pub sync_timeout: Duration,

    /// Re-run the metadata stage first even if its outputs exist.
    #[arg(long)]
    pub refresh: bool,

    /// Keep running after READY and re-sync every INTERVAL.
    #[arg(long, value_parser = duration::parse, allow_hyphen_values = true, value_name = "INTERVAL")]
    pub watch: Option<Duration>,

    /// With --watch: run this command (via /bin/sh -c) after a change is swapped in.
    #[arg(long, requires = "watch", value_name = "CMD")]
    pub on_change: Option<String>,

    /// With --watch: an SQS queue whose S3 events or deployment messages start a pass at
    /// once (else `bootstage.watch.sqs` in the parameters); polling stays the safety net.
    #[arg(long, requires = "watch", value_name = "QUEUE_URL")]
    pub sqs: Option<String>,

    #[command(
        flatten,
        next_help_heading = "Metadata (run first when its outputs are missing)"
    )]
    pub metadata: MetadataArgs,
}

/// A parse error, with what to type added where a newcomer's mistake is plain: the app's
/// command given to `launch` without `--` before it (`args`: the whole command line).
pub fn explain(mut error: clap::Error, args: &[String]) -> clap::Error {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let Some(ContextValue::String(invalid)) = error.get(ContextKind::InvalidArg) else {
        return error;
    };
    // Where `launch` is, and the first word after it that clap did not take.
    let launch = args.iter().position(|a| a == "launch").filter(|&i| i > 0);
    let at = launch.and_then(|l| (l + 1..args.len()).find(|&i| args[i] == *invalid));
    let (Some(at), ErrorKind::UnknownArgument) = (at, error.kind()) else {
        return error;
    };
    if invalid.starts_with('-') || args.iter().any(|a| a == "--") {
        return error;
    }
    let words: Vec<String> = std::iter::once("bootstage".to_string())
        .chain(args[1..at].iter().cloned())
        .chain(std::iter::once("--".to_string()))
        .chain(args[at..].iter().cloned())
        .map(|word| shell_word(&word))
        .collect();
    let tip = format!("the app's command goes after --: {}", words.join(" "));
    error.insert(
        ContextKind::Suggested,
        ContextValue::StyledStrs(vec![tip.into()]),
    );
    error
}

/// `word` as a shell reads it back: quoted when it holds anything but plain characters.
fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b));
    match plain {
        true => word.to_string(),
        false => format!("'{}'", word.replace('\'', r"'\''")),
    }
}

/// The `BOOTSTAGE_*` variables that hold a duration.
const DURATION_VARS: &[&str] = &[
    "BOOTSTAGE_TIMEOUT",
    "BOOTSTAGE_USER_DATA_WAIT",
    "BOOTSTAGE_HOOK_TIMEOUT",
];

/// Checks the duration variables before clap reads them, so a bad one is reported by its
/// name (clap names only the flag): `BOOTSTAGE_TIMEOUT="abc": not a duration; …`.
pub fn check_env() -> Result<(), String> {
    for var in DURATION_VARS {
        if let Ok(value) = std::env::var(var)
            && let Err(why) = duration::parse(&value)
        {
            return Err(format!("{var}={value:?}: {why}"));
        }
    }
    Ok(())
}

/// An image settings file: where the variable its command's flag reads says, else the
/// default (the metadata stage checks it without having that command's flags).
fn image_file(variable: &str, default: &str) -> PathBuf {
    std::env::var_os(variable)
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(default), PathBuf::from)
}

impl From<MetadataArgs> for metadata::Settings {
    fn from(a: MetadataArgs) -> Self {
        metadata::Settings {
            imds_endpoint: a.imds_endpoint,
            provider: a.provider,
            dmi_root: a.dmi_dir,
            imds_v2_only: a.imds_v2_only,
            timeout: a.timeout,
            user_data_wait: a.user_data_wait,
            request_timeout: a.request_timeout,
            allow_empty: a.allow_empty,
            user_data_file: a.user_data_file,
            facts: a.facts,
            image_files: vec![
                (
                    "notify",
                    image_file("BOOTSTAGE_NOTIFY_CONFIG", notice::DEFAULT_CONFIG),
                ),
                (
                    "lifecycle",
                    image_file("BOOTSTAGE_LIFECYCLE_CONFIG", lifecycle::DEFAULT_CONFIG),
                ),
                (
                    "report",
                    image_file("BOOTSTAGE_REPORT_CONFIG", notice::report::DEFAULT_CONFIG),
                ),
            ],
        }
    }
}

impl From<HookDirs> for hooks::HookDirs {
    fn from(a: HookDirs) -> Self {
        hooks::HookDirs {
            hooks_dir: a.hooks_dir,
            lib_dir: a.lib_dir,
            hook_timeout: a.hook_timeout,
        }
    }
}

impl From<HooksArgs> for hooks::Settings {
    fn from(a: HooksArgs) -> Self {
        hooks::Settings {
            refresh: a.refresh,
            dirs: a.dirs.into(),
            metadata: a.metadata.into(),
        }
    }
}

impl From<LaunchArgs> for launch::Settings {
    fn from(a: LaunchArgs) -> Self {
        let hooks: hooks::HookDirs = a.hooks.into();
        let metadata: metadata::Settings = a.metadata.into();
        launch::Settings {
            refresh: a.refresh,
            start: a.start.settings(hooks.clone(), metadata.clone(), false),
            hooks,
            metadata,
            command: a.command,
        }
    }
}

impl StartArgs {
    fn settings(
        self,
        hooks: hooks::HookDirs,
        metadata: metadata::Settings,
        once: bool,
    ) -> in_service::Settings {
        in_service::Settings {
            metadata,
            hooks,
            lifecycle: self.lifecycle.into(),
            poll: self.poll,
            once,
        }
    }
}

impl From<InServiceArgs> for in_service::Settings {
    fn from(a: InServiceArgs) -> Self {
        a.start.settings(a.hooks.into(), a.metadata.into(), a.once)
    }
}

impl From<SyncArgs> for s3sync::Settings {
    fn from(a: SyncArgs) -> Self {
        s3sync::Settings {
            from: a.from,
            to: a.to,
            sha256: a.sha256,
            allow_empty: a.allow_empty_source,
            concurrency: a.concurrency,
            sync_timeout: a.sync_timeout,
            refresh: a.refresh,
            watch: a.watch,
            on_change: a.on_change,
            sqs: a.sqs,
            metadata: a.metadata.into(),
        }
    }
}

impl From<StatusArgs> for status::Settings {
    fn from(a: StatusArgs) -> Self {
        status::Settings {
            wait: a.wait,
            timeout: a.timeout,
            json: a.json,
            lifecycle: a.lifecycle.into(),
        }
    }
}

impl From<QueryArgs> for query::Settings {
    fn from(a: QueryArgs) -> Self {
        query::Settings {
            key: a.key,
            all: a.all,
            json: a.json,
        }
    }
}

impl From<NotifyArgs> for notice::Settings {
    fn from(a: NotifyArgs) -> Self {
        notice::Settings {
            event: match a.event {
                NotifyEvent::Failure => notice::Event::Failure,
                NotifyEvent::Ready => notice::Event::Ready,
            },
            unit: a.unit,
            config: a.config,
            lifecycle: a.lifecycle.into(),
            report_config: a.report_config,
            journalctl: a.journalctl,
        }
    }
}

impl From<WatchArgs> for lifecycle::Watch {
    fn from(a: WatchArgs) -> Self {
        lifecycle::Watch {
            dirs: a.dirs.into(),
            imds_endpoint: a.imds_endpoint,
            poll_every: a.poll_every,
            systemctl: a.systemctl,
            notify_config: a.notify_config,
        }
    }
}

impl From<LifecycleConfig> for lifecycle::Settings {
    fn from(a: LifecycleConfig) -> Self {
        lifecycle::Settings {
            config: a.path,
            failure_grace: a.failure_grace,
        }
    }
}
