//! The command line: one binary, one subcommand per stage.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::stage::hooks;
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
    /// Send the failure or ready notice configured in bootstage.notify.
    Notify(NotifyArgs),
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
    #[arg(long, env = "BOOTSTAGE_HOOK_TIMEOUT", default_value = "10m", value_parser = humantime::parse_duration, value_name = "DURATION")]
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
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub timeout: Duration,

    /// Print JSON: {"state": …, "stages": [{"stage", "state", "started_at", …}]}.
    #[arg(long)]
    pub json: bool,
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
        default_value = "/etc/bootstage/notify.json",
        value_name = "PATH"
    )]
    pub config: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct MetadataArgs {
    /// IMDS base URL [default: AWS_EC2_METADATA_SERVICE_ENDPOINT, else by
    /// AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE, else http://169.254.169.254].
    #[arg(long, value_name = "URL")]
    pub imds_endpoint: Option<String>,

    /// Refuse IMDSv1: fail if the endpoint offers no IMDSv2 token.
    #[arg(long, env = "BOOTSTAGE_IMDS_V2_ONLY")]
    pub imds_v2_only: bool,

    /// Overall deadline for the stage; keep it below the unit's TimeoutStartSec.
    #[arg(long, env = "BOOTSTAGE_TIMEOUT", default_value = "90s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub timeout: Duration,

    /// How long a missing user-data (404) counts as "not there yet" before it is final
    /// [default: 30s, or --timeout if shorter].
    #[arg(long, env = "BOOTSTAGE_USER_DATA_WAIT", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub user_data_wait: Option<Duration>,

    /// Bound on each HTTP request, connect included.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration, value_name = "DURATION")]
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

pub const DEFAULT_CONCURRENCY: u16 = 16;
pub const DEFAULT_SYNC_TIMEOUT: &str = "5m";

/// The user-data grace period when `--user-data-wait` is not given.
pub const DEFAULT_USER_DATA_WAIT: Duration = Duration::from_secs(30);

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

    /// The app and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct SyncArgs {
    /// Sync this source (s3://BUCKET/PREFIX/ or file:///DIR/) instead of the parameters'
    /// `bootstage.sync` list.
    #[arg(long, requires = "to", value_name = "URL")]
    pub from: Option<String>,

    /// Destination for --from: a path that becomes a symlink to the synced tree.
    #[arg(long, requires = "from", value_name = "DIR")]
    pub to: Option<PathBuf>,

    /// Downloads in flight at once, per destination.
    #[arg(long, default_value_t = DEFAULT_CONCURRENCY, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,

    /// Overall deadline for one sync pass; keep it below the unit's TimeoutStartSec.
    #[arg(long, default_value = DEFAULT_SYNC_TIMEOUT, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub sync_timeout: Duration,

    /// Re-run the metadata stage first even if its outputs exist.
    #[arg(long)]
    pub refresh: bool,

    /// Keep running after READY and re-sync every INTERVAL.
    #[arg(long, value_parser = humantime::parse_duration, value_name = "INTERVAL")]
    pub watch: Option<Duration>,

    /// With --watch: run this command (via /bin/sh -c) after a change is swapped in.
    #[arg(long, requires = "watch", value_name = "CMD")]
    pub on_change: Option<String>,

    #[command(
        flatten,
        next_help_heading = "Metadata (run first when its outputs are missing)"
    )]
    pub metadata: MetadataArgs,
}

impl MetadataArgs {
    pub fn user_data_wait(&self) -> Duration {
        self.user_data_wait
            .unwrap_or(DEFAULT_USER_DATA_WAIT.min(self.timeout))
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.timeout.is_zero() || self.request_timeout.is_zero() {
            return Err("--timeout and --request-timeout must be above zero".into());
        }
        if self.user_data_wait.is_some_and(|wait| wait > self.timeout) {
            return Err("--user-data-wait must not exceed --timeout".into());
        }
        if !self.facts.is_empty() && self.user_data_file.is_none() {
            return Err("--fact goes with --user-data-file (on EC2, facts come from IMDS)".into());
        }
        Ok(())
    }
}
