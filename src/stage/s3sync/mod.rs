//! The `s3-sync` stage: each configured source into its destination, complete and
//! verified, or not at all.
//!
//! A run, step by step:
//! 1. make sure the parameters exist (run the metadata stage in-process when they are
//!    missing, or always with `--refresh`);
//! 2. read what to sync: `--from/--to`, else the parameters' `bootstage.sync` list;
//! 3. for every destination at once: list the source (one paginated LIST, no HEADs),
//!    compare ETag and size with the current generation's manifest, and if anything
//!    changed build a new generation: unchanged files hard-linked from the current one,
//!    changed and new ones downloaded with bounded concurrency and verified, modes and
//!    owners applied, `syncfs`, then one atomic symlink swap (see `tree.rs`). An object
//!    replaced mid-sync makes the pass start over from a fresh LIST, up to 3 times; a
//!    transient failure (S3 unreachable, 5xx past the SDK's own retries, a timeout) makes
//!    it start over under the retry policy until `--sync-timeout`. The stage must succeed
//!    in one start: systemd does not start again the units whose start failed with ours,
//!    so a `Restart=` would sync the tree and still leave the app down;
//! 4. READY=1 after every destination is swapped in; with `--watch`, keep re-syncing.
//!
//! A source that names one archive (`….tar`, `.tar.gz`, `.tgz`, `.tar.zst`) is a bundle
//! instead (`bundle.rs`): one conditional GET, unpacked as it streams into a new
//! generation, swapped in the same way.
//!
//! Any error discards the half-built generation: the destination keeps its old tree.

mod bundle;
mod owner;
mod prefix;
mod progress;
mod release;
mod watch;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::aws::{self, Aws, AwsError};
use crate::base::notify::Notifier;
use crate::base::retry::{self, Deadline, RetryHint};
use crate::base::stop::Stop;
use crate::events::Queue;
use crate::settings::{Bootstage, SyncSpec, WatchSpec};
use crate::stage::error::{Error, ExitCode, ExitStatus, Result};
use crate::stage::metadata;
use crate::state::StateDir;
use crate::state::status::{self, Stage};
use crate::sync::archive::UnpackError;
use crate::sync::keys::KeyError;
use crate::sync::source::{Bundle, Location, Source, SourceError};
use crate::sync::tree::{Destination, TreeError};
use owner::Ownership;
use prefix::pass_once;
use progress::{Counters, Progress};

pub const DEFAULT_CONCURRENCY: u16 = 16;
pub const DEFAULT_SYNC_TIMEOUT: &str = "5m";

/// One run of the stage: the configured sync (or one `from`/`to` pair), once or watching.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Sync this source instead of the parameters' `bootstage.sync` list (with `to`).
    pub from: Option<String>,
    pub to: Option<PathBuf>,
    /// With `from`: the archive's pinned SHA-256, and whether it may be empty.
    pub sha256: Option<String>,
    pub allow_empty: bool,
    /// Downloads in flight at once, per destination.
    pub concurrency: u16,
    /// Deadline for one sync pass.
    pub sync_timeout: Duration,
    /// Re-run the metadata stage first.
    pub refresh: bool,
    /// Keep running and re-sync every interval.
    pub watch: Option<Duration>,
    /// With `watch`: a command for `/bin/sh -c` after a change is swapped in.
    pub on_change: Option<String>,
    /// With `watch`: an SQS queue whose messages start a pass at once.
    pub sqs: Option<String>,
    pub metadata: metadata::Settings,
}

/// How often a pass starts over because an object changed between LIST and GET.
const PASSES: u32 = 3;
/// Retries of one download whose transfer failed (a throttled one is retried until the
/// pass's deadline).
const FETCH_RETRIES: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("sync settings: {0}")]
    Settings(String),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    /// An empty prefix or a missing archive, without `allow_empty`.
    #[error("{0}: {1}; if it may be empty, say \"allow_empty\": true in its bootstage.sync entry")]
    Empty(String, &'static str),
    /// The source, the limit, and what failed last if a pass was retried.
    #[error("{0}: the sync did not finish within --sync-timeout {1}{2}")]
    Deadline(String, String, String),
    /// The AWS setup: no region, no CA store, an endpoint the SDK cannot use.
    #[error("sync settings: {0}")]
    Aws(AwsError),
    /// No credentials for the sources named (S3 URLs), with why.
    #[error("{0}: {1}")]
    Credentials(String, AwsError),
    /// A release pointer that cannot be read, or whose value is not a source; its code.
    #[error("{0}")]
    Pointer(String, ExitCode),
    /// A new generation failed its `verify`: which release, why, and what runs now.
    #[error("{dest}: the release {failed} failed its verify ({why}); {}", match running {
        Some(r) => format!("the previous generation ({r}) is current again"),
        None => "no previous generation is kept, so it stays current, marked failed".to_string(),
    })]
    Verify {
        dest: String,
        failed: String,
        why: String,
        running: Option<String>,
    },
}

impl From<SyncError> for Error {
    fn from(e: SyncError) -> Error {
        Error::Stage(Box::new(e))
    }
}

impl ExitStatus for SyncError {
    fn exit_code(&self) -> ExitCode {
        match self {
            SyncError::Settings(_)
            | SyncError::Key(_)
            | SyncError::Source(SourceError::BadUrl(_) | SourceError::Shape { .. })
            | SyncError::Unpack(UnpackError::Refused { .. } | UnpackError::Malformed { .. }) => {
                ExitCode::BadUserData
            }
            SyncError::Empty(..) | SyncError::Source(SourceError::NoDirectory { .. }) => {
                ExitCode::NoInput
            }
            SyncError::Unpack(UnpackError::Tree(_)) => ExitCode::CantCreate,
            SyncError::Source(SourceError::Refused { .. }) => ExitCode::NoPerm,
            SyncError::Source(SourceError::Corrupt { .. }) => ExitCode::Protocol,
            SyncError::Source(SourceError::Local { .. }) => ExitCode::CantCreate,
            SyncError::Tree(e) => e.exit_code(),
            SyncError::Aws(e) | SyncError::Credentials(_, e) => e.exit_code(),
            SyncError::Pointer(_, code) => *code,
            SyncError::Verify { .. } => ExitCode::VerifyFailed,
            SyncError::Source(
                SourceError::Failed { .. }
                | SourceError::Throttled { .. }
                | SourceError::Changed { .. },
            )
            | SyncError::Deadline(..) => ExitCode::TempFail,
        }
    }
}

/// What one destination's pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub objects: usize,
    pub downloaded: usize,
    pub bytes: u64,
    pub deleted: usize,
    pub list_pages: u32,
    pub swapped: bool,
}

/// How much one pass may do at once, and how long it may take.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    pub concurrency: usize,
    pub timeout: Duration,
}

impl Bounds {
    fn of(args: &Settings) -> Bounds {
        Bounds {
            concurrency: args.concurrency.into(),
            timeout: args.sync_timeout,
        }
    }

    /// The command line's defaults, for syncs that `launch` runs.
    fn defaults() -> Bounds {
        let timeout = crate::base::duration::parse(DEFAULT_SYNC_TIMEOUT).expect("a valid default");
        Bounds {
            concurrency: DEFAULT_CONCURRENCY.into(),
            timeout,
        }
    }
}

pub async fn run(state: &StateDir, args: &Settings, notifier: Notifier) -> Result<()> {
    // In watch mode SIGTERM is ours to handle from the start, so a pass it interrupts is
    // dropped cleanly (its staging dir removed) and the process exits 0.
    let mut stop = match args.watch {
        Some(_) => Some(Stop::install().map_err(|e| Error::Write {
            path: "signal handler".into(),
            source: e,
        })?),
        None => None,
    };
    let first = first_pass(state, args, notifier);
    let First {
        syncer,
        specs,
        summary,
        watching,
    } = match &mut stop {
        Some(stop) => tokio::select! {
            first = first => first?,
            _ = stop.requested() => return Ok(()),
        },
        None => first.await?,
    };
    tracing::info!("{summary}");
    let (Some(watching), Some(stop)) = (watching, stop) else {
        notifier.ready(&summary);
        return Ok(());
    };
    // READY once the queue's first receive is on its way: nothing after the first pass
    // can be missed.
    let listener = listen(&watching, &syncer, args).await;
    notifier.ready(&summary);
    let interval = watching.interval.expect("set from --watch at least");
    let watcher = watch::Watcher {
        state,
        syncer: &syncer,
        specs: &specs,
        args,
        notifier,
        interval,
    };
    watch::watch(watcher, listener, stop).await
}

/// What the first pass leaves to what follows it.
struct First {
    syncer: Syncer,
    specs: Vec<SyncSpec>,
    /// The first pass's summary, for the journal and READY=1.
    summary: String,
    /// With `--watch`: how to watch.
    watching: Option<WatchSpec>,
}

/// What to sync and how to watch, read and checked; then every destination synced (the
/// configured sync under its status record).
async fn first_pass(state: &StateDir, args: &Settings, notifier: Notifier) -> Result<First> {
    // The configured sync is the boot's stage and keeps a status record; a one-off
    // `--from/--to` run by hand does not overwrite it.
    let configured_stage = args.from.is_none();
    let specs = specs_of(state, args, notifier).await?;
    let watching = watching_of(state, args)?;
    let needs_sqs = watching.as_ref().is_some_and(|w| w.sqs.is_some());
    let mut syncer = Syncer::new(state, &specs, Bounds::of(args), needs_sqs).await?;
    syncer.hooks.notifier = notifier;
    if let Some((_, file)) = args
        .metadata
        .image_files
        .iter()
        .find(|(k, _)| *k == "notify")
    {
        syncer.hooks.notify = file.clone();
    }
    if watching.is_some() {
        // A release's verify runs after the hook: the app serves the new tree first.
        syncer.hooks.on_change = args.on_change.clone();
    }
    let pass = async {
        let reports = all_ok(syncer.sync_all(&specs, notifier, true).await)?;
        Ok::<_, Error>(summarize(&reports))
    };
    let summary = match configured_stage {
        true => status::track(state, Stage::S3Sync, pass).await?,
        false => pass.await?,
    };
    Ok(First {
        syncer,
        specs,
        summary,
        watching,
    })
}

/// What to sync: `--from/--to`, checked, else the parameters' `bootstage.sync`; the
/// metadata stage runs first when its outputs are missing (for `--from/--to`, only when
/// its flags are given).
async fn specs_of(state: &StateDir, args: &Settings, notifier: Notifier) -> Result<Vec<SyncSpec>> {
    if let (Some(from), Some(to)) = (&args.from, &args.to) {
        let spec = SyncSpec {
            sha256: args.sha256.clone(),
            allow_empty: args.allow_empty,
            ..SyncSpec::plain(from, to)
        };
        spec.check().map_err(SyncError::Settings)?;
        // The metadata flags `--help` lists under "run first" hold here too: given
        // (or --refresh), the metadata stage runs first when its outputs are
        // missing, and the region comes from its facts. Without them a one-off sync
        // needs no IMDS.
        if args.refresh || args.metadata.names_a_source() {
            metadata::ensure(state, &args.metadata, args.refresh, notifier).await?;
        }
        return Ok(vec![spec]);
    }
    metadata::ensure(state, &args.metadata, args.refresh, notifier).await?;
    let own = bootstage(state)?;
    if args.watch.is_none() && own.watch.is_some() {
        tracing::warn!("{UNWATCHED}");
    }
    Ok(own.sync)
}

/// How a `--watch` run watches (`None` without `--watch`), the queue's URL checked and
/// filled in before the first pass, so a bad one fails the stage before anything is
/// synced.
fn watching_of(state: &StateDir, args: &Settings) -> Result<Option<WatchSpec>> {
    let Some(interval) = args.watch else {
        return Ok(None);
    };
    let params = match args.from.is_none() {
        true => Some(watch_settings(state)?),
        false => None,
    };
    let mut watching = watch_spec(interval, args.sqs.clone(), params);
    watching.sqs = watching.sqs.map(|url| queue_url(state, &url)).transpose()?;
    Ok(Some(watching))
}

/// The watch settings of a `--watch` run: a one-off `--from/--to` watcher's (no
/// `params`) are its flags'; the configured sync's are the parameters' `bootstage.watch`,
/// with the flag's interval when it names none, and `--sqs` over its queue.
fn watch_spec(interval: Duration, sqs: Option<String>, params: Option<WatchSpec>) -> WatchSpec {
    match params {
        None => WatchSpec {
            sqs,
            interval: Some(interval),
            ..WatchSpec::default()
        },
        Some(mut spec) => {
            spec.interval = spec.interval.or(Some(interval));
            spec.sqs = sqs.or(spec.sqs);
            spec
        }
    }
}

/// The queue's reader, when the watcher has a queue: started, its first receive on its
/// way.
async fn listen(watching: &WatchSpec, syncer: &Syncer, args: &Settings) -> Option<watch::Listener> {
    let (Some(url), Some(aws)) = (&watching.sqs, &syncer.aws) else {
        return None;
    };
    let client = aws.sqs(Queue::region_of(url).as_deref());
    // Received during a pass, a message waits for that pass, the hook and its own
    // pass before it is deleted.
    let hidden = args.sync_timeout * 3 + Duration::from_secs(60);
    let every = humantime::format_duration(watching.interval.unwrap_or_default());
    tracing::info!(
        queue = url,
        interval = %every,
        "watch: woken by the queue, polling as the safety net"
    );
    Some(watch::listen(Queue::new(client, url), hidden).await)
}

/// The queue URL with `{instance_id}`, `{region}` and `{account_id}` filled in from the
/// instance's facts: one launch template's user-data names each instance's own queue.
fn queue_url(state: &StateDir, url: &str) -> Result<String, SyncError> {
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        let why = "bootstage.watch: \"sqs\" must be a queue URL (https://sqs.REGION.amazonaws.com/ACCOUNT/NAME)";
        return Err(SyncError::Settings(why.into()));
    }
    if !url.contains('{') {
        return Ok(url.to_string());
    }
    let facts: Option<crate::imds::facts::Facts> = std::fs::read(state.instance_json())
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    let mut out = url.to_string();
    for (name, value) in [
        (
            "{instance_id}",
            facts.as_ref().and_then(|f| f.instance_id.clone()),
        ),
        ("{region}", facts.as_ref().and_then(|f| f.region.clone())),
        (
            "{account_id}",
            facts.as_ref().and_then(|f| f.account_id.clone()),
        ),
    ] {
        if !out.contains(name) {
            continue;
        }
        // Facts come from IMDS, but a URL is no place for anything but a plain name.
        let value = value
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        let Some(value) = value else {
            return Err(SyncError::Settings(format!(
                "bootstage.watch: the queue URL asks for {name}, which this instance's facts do not give"
            )));
        };
        out = out.replace(name, &value);
    }
    if out.contains('{') {
        return Err(SyncError::Settings(
            "bootstage.watch: the queue URL has a placeholder other than {instance_id}, {region} or {account_id}".into(),
        ));
    }
    Ok(out)
}

/// What a `bootstage.watch` that nothing acts on means, for the journal and `status`.
pub const UNWATCHED: &str = "bootstage.watch is set, but s3-sync runs without --watch: install the watch drop-in (systemd/examples/bootstage-s3-sync.service.d/watch.conf as /etc/systemd/system/bootstage-s3-sync.service.d/watch.conf) or remove bootstage.watch";

/// Whether the parameters hold a `bootstage.watch` (for `status`; unchecked).
pub fn wants_watch(state: &StateDir) -> bool {
    std::fs::read(state.params_json())
        .ok()
        .and_then(|text| serde_json::from_slice::<serde_json::Value>(&text).ok())
        .is_some_and(|p| {
            p.get(crate::state::envfile::SETTINGS_KEY)
                .and_then(|b| b.get("watch"))
                .is_some_and(|w| !w.is_null())
        })
}

/// The parameters' `bootstage.watch`, checked.
fn watch_settings(state: &StateDir) -> Result<WatchSpec> {
    Ok(bootstage(state)?.watch.unwrap_or_default())
}

/// For `launch` run by hand, after the metadata stage: syncs every configured destination
/// that does not exist yet (all of them with `refresh`), with the default bounds. Sends no
/// READY.
pub async fn sync_missing(state: &StateDir, refresh: bool, notifier: Notifier) -> Result<()> {
    let mut specs = configured(state)?;
    specs.retain(|s| refresh || std::fs::symlink_metadata(&s.to).is_err());
    if specs.is_empty() {
        // Nothing to fetch: the stage is satisfied; say so once, for `status`.
        if !status::is_done(state, Stage::S3Sync) {
            status::track(state, Stage::S3Sync, async { Ok::<_, Error>(()) }).await?;
        }
    } else {
        tracing::info!(
            destinations = specs.len(),
            "syncing what is missing before launch"
        );
        let pass = async {
            let syncer = Syncer::new(state, &specs, Bounds::defaults(), false).await?;
            let reports = all_ok(syncer.sync_all(&specs, notifier, true).await)?;
            Ok::<_, Error>(summarize(&reports))
        };
        let summary = status::track(state, Stage::S3Sync, pass).await?;
        tracing::info!("{summary}");
    }
    Ok(())
}

/// The parameters' `bootstage` settings, checked.
fn bootstage(state: &StateDir) -> Result<Bootstage> {
    let path = state.params_json();
    let text = std::fs::read(&path).map_err(|source| Error::Read {
        path: path.clone(),
        source,
    })?;
    let params: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&text)
        .map_err(|e| SyncError::Settings(format!("{}: not a JSON object ({e})", path.display())))?;
    Ok(Bootstage::from_params(&params).map_err(|e| SyncError::Settings(e.0))?)
}

/// The parameters' `bootstage.sync` list, checked.
fn configured(state: &StateDir) -> Result<Vec<SyncSpec>> {
    Ok(bootstage(state)?.sync)
}

/// What every pass of a process shares: the AWS configuration and S3 client (built once,
/// so watch mode does not load credentials again each interval) and the bounds.
struct Syncer {
    aws: Option<Aws>,
    /// The S3 client, for release pointers' sources (built once).
    s3: Option<aws_sdk_s3::Client>,
    /// What a release's verify needs: the change hook (watch mode), the notice settings.
    hooks: release::Hooks,
    /// Each spec's source, by its `from`, resolved once (with the S3 client it needs).
    origins: std::collections::BTreeMap<String, Arc<Origin>>,
    bounds: Bounds,
}

impl Syncer {
    async fn new(
        state: &StateDir,
        specs: &[SyncSpec],
        bounds: Bounds,
        sqs: bool,
    ) -> Result<Syncer> {
        // A release pointer names a source in S3 (or on disk) that only a pass learns.
        let ssm = specs.iter().any(|s| s.release_parameter().is_some());
        let s3 = ssm || specs.iter().any(|s| s.from.starts_with("s3://"));
        let services: Vec<&'static str> = [(s3, "S3"), (ssm, "SSM"), (sqs, "SQS")]
            .into_iter()
            .filter_map(|(wanted, name)| wanted.then_some(name))
            .collect();
        let services = services.as_slice();
        let aws = match services.is_empty() {
            false => Some(
                Aws::load(aws::instance_region(state), services, bounds.timeout)
                    .await
                    .map_err(SyncError::Aws)?,
            ),
            true => None,
        };
        // No credentials at all is said within seconds, not after every request of every
        // pass has failed until the deadline.
        if let (true, Some(aws)) = (s3, &aws) {
            let wait = aws::credentials::WAIT.min(bounds.timeout);
            if let Err(e) = aws::credentials::check(aws, "S3", wait).await {
                let urls: Vec<&str> = specs
                    .iter()
                    .filter(|s| s.from.starts_with("s3://"))
                    .map(|s| s.from.as_str())
                    .collect();
                return Err(SyncError::Credentials(urls.join(", "), e).into());
            }
        }
        let client = aws.as_ref().filter(|_| s3).map(Aws::s3);
        let mut origins = std::collections::BTreeMap::new();
        // A release pointer's origin is made on each pass, from the parameter's value.
        for spec in specs.iter().filter(|s| s.release_parameter().is_none()) {
            let resolved = origin(&spec.from, client.as_ref())?;
            origins.insert(spec.from.clone(), Arc::new(resolved));
        }
        Ok(Syncer {
            aws,
            s3: client,
            hooks: release::Hooks {
                on_change: None,
                state: state.clone(),
                notify: PathBuf::from(crate::stage::notice::deliver::DEFAULT_CONFIG),
                limit: bounds.timeout,
                notifier: Notifier::from_env(),
            },
            origins,
            bounds,
        })
    }

    /// Syncs every destination concurrently, each bounded by the pass timeout, then checks
    /// the new releases (`release::gate`); one result per spec, in order. With `retry`, a
    /// destination whose pass fails transiently is synced again until the timeout (the
    /// boot's sync); without, the failure is returned at once (watch mode: the next
    /// interval is the retry).
    async fn sync_all(
        &self,
        specs: &[SyncSpec],
        notifier: Notifier,
        retry: bool,
    ) -> Vec<Result<Report, SyncError>> {
        let swapped = self.swap_all(specs, notifier, retry, false).await;
        release::gate(swapped, specs, &self.hooks, &[])
            .await
            .results
    }

    /// `sync_all` up to the swaps: each destination's report with the destination, still
    /// locked, for `release::gate`. With `announce` (the watch loop's passes), every swap
    /// is announced with `--on-change`; without (the first pass), only those of a
    /// destination with a `verify` (the app must serve it before it is checked). Each
    /// swap so announced records the hook owed until it ran.
    async fn swap_all(
        &self,
        specs: &[SyncSpec],
        notifier: Notifier,
        retry: bool,
        announce: bool,
    ) -> Vec<release::Swapped> {
        if specs.is_empty() {
            tracing::warn!(
                "nothing to sync: no --from/--to and no bootstage.sync in the parameters"
            );
            return Vec::new();
        }
        let progress = Arc::new(Progress::new(specs.len()));
        let ticker = tokio::spawn(progress.clone().report(notifier));
        let resolved = self.resolve(specs).await;
        let passes = resolved
            .into_iter()
            .zip(&progress.dests)
            .map(|(spec, counters)| {
                let bytes = &progress.bytes;
                async move {
                    let spec = &spec?;
                    let made;
                    let source = match spec.release_parameter() {
                        Some(_) => {
                            made = origin(&spec.from, self.s3.as_ref())?;
                            &made
                        }
                        None => self.origins.get(&spec.from).map(|o| &**o).ok_or_else(|| {
                            SyncError::Settings(format!("{}: not a source of this run", spec.from))
                        })?,
                    };
                    let deadline = Deadline::after(self.bounds.timeout);
                    let hook =
                        self.hooks.on_change.is_some() && (announce || spec.verify.is_some());
                    let pass =
                        || sync_one(source, spec, self.bounds, counters, bytes, deadline, hook);
                    let last_error = std::sync::Mutex::new(String::new());
                    let on_retry = |e: &SyncError, attempt, sleep| {
                        tracing::warn!(
                            "{}: {e}; syncing again in {sleep:.1?} (retry {attempt})",
                            spec.to.display()
                        );
                        *last_error.lock().unwrap() = last_error_of(e);
                    };
                    let passes = async {
                        match retry {
                            true => {
                                retry::until_deadline(retry::BACKOFF, deadline, on_retry, pass)
                                    .await
                            }
                            false => pass().await,
                        }
                    };
                    let out_of_time = |last: String| {
                        let limit = humantime::format_duration(self.bounds.timeout).to_string();
                        let throttled = counters.throttled.load(Ordering::Relaxed);
                        let last = match (last.is_empty(), throttled) {
                            (true, 1..) => {
                                format!("; S3 throttled downloads {throttled} times (503 SlowDown)")
                            }
                            _ => last,
                        };
                        SyncError::Deadline(spec.from.clone(), limit, last)
                    };
                    // The deadline ends the retries; this also ends a pass that hangs. A
                    // release's verify comes after every destination's pass, under its own
                    // bounds (`release::gate`). The retries give up a moment before the
                    // deadline when no attempt fits: a transient error then is the deadline
                    // too, whichever of the two ended first.
                    match tokio::time::timeout(self.bounds.timeout, passes).await {
                        Err(_) => Err(out_of_time(std::mem::take(
                            &mut *last_error.lock().unwrap(),
                        ))),
                        Ok(Err(e)) if retry && e.retry_after().is_some() => {
                            Err(out_of_time(last_error_of(&e)))
                        }
                        Ok(result) => result,
                    }
                }
            });
        let results = futures_util::future::join_all(passes).await;
        ticker.abort();
        progress.finish();
        results
    }

    /// Each spec with its release pointer read (all of this pass's pointers in one call,
    /// retried while throttled or unreachable until the pass's deadline) and its value
    /// checked as a `from` in user-data is; the others as they are.
    async fn resolve(&self, specs: &[SyncSpec]) -> Vec<Result<SyncSpec, SyncError>> {
        let mut names: Vec<&str> = specs.iter().filter_map(|s| s.release_parameter()).collect();
        names.sort();
        names.dedup();
        let values = match (&self.aws, names.is_empty()) {
            (_, true) => Default::default(),
            (Some(aws), false) => {
                release::values(aws, &names, Deadline::after(self.bounds.timeout)).await
            }
            (None, false) => Default::default(),
        };
        specs
            .iter()
            .map(|spec| {
                let Some(name) = spec.release_parameter() else {
                    return Ok(spec.clone());
                };
                match values.get(name) {
                    Some(Ok(value)) => {
                        let resolved = spec
                            .resolve(value)
                            .map_err(|why| SyncError::Pointer(why, ExitCode::BadUserData))?;
                        tracing::debug!(
                            parameter = name,
                            source = resolved.from,
                            "release pointer read"
                        );
                        Ok(resolved)
                    }
                    Some(Err(e)) => Err(SyncError::Pointer(e.to_string(), e.exit_code())),
                    None => Err(SyncError::Settings(format!(
                        "release pointer {name:?}: no SSM client was built"
                    ))),
                }
            })
            .collect()
    }
}

/// Where `from` is read from, with the S3 client when it is in S3 (built by
/// `Syncer::new` whenever a spec names S3).
fn origin(from: &str, client: Option<&aws_sdk_s3::Client>) -> Result<Origin, SyncError> {
    let client = || {
        client.cloned().ok_or_else(|| {
            SyncError::Settings(format!("{from}: an S3 source, but no S3 client was built"))
        })
    };
    Ok(match Location::parse(from)? {
        Location::S3 { bucket, prefix } => Origin::Prefix(Source::S3 {
            client: client()?,
            bucket,
            prefix,
        }),
        Location::Dir { root } => Origin::Prefix(Source::Dir { root }),
        Location::S3Archive {
            bucket,
            key,
            format,
        } => Origin::Bundle(Bundle::S3 {
            client: client()?,
            bucket,
            key,
            format,
        }),
        Location::FileArchive { path, format } => Origin::Bundle(Bundle::File { path, format }),
    })
}

/// What a destination is synced from: many objects, or one archive.
enum Origin {
    Prefix(Source),
    Bundle(Bundle),
}

/// Transient: the source failed in a way a later attempt may not. Everything else
/// (refused, corrupt, changed, local errors) would fail the same way again, or is handled
/// by starting the pass over (`sync_one`).
impl RetryHint for SourceError {
    fn retry_after(&self) -> Option<Duration> {
        match self {
            SourceError::Failed { .. } | SourceError::Throttled { .. } => Some(Duration::ZERO),
            _ => None,
        }
    }
}

impl RetryHint for SyncError {
    fn retry_after(&self) -> Option<Duration> {
        match self {
            SyncError::Source(e) => e.retry_after(),
            SyncError::Pointer(_, ExitCode::TempFail) => Some(Duration::ZERO),
            _ => None,
        }
    }
}

/// Every destination's report, or the first error.
fn all_ok(results: Vec<Result<Report, SyncError>>) -> Result<Vec<Report>> {
    results
        .into_iter()
        .map(|r| r.map_err(Error::from))
        .collect()
}

/// One destination: a bundle in one pass, a prefix starting over from a fresh LIST when
/// an object changes mid-pass.
async fn sync_one(
    origin: &Origin,
    spec: &SyncSpec,
    bounds: Bounds,
    counters: &Counters,
    bytes: &AtomicU64,
    deadline: Deadline,
    hook: bool,
) -> Result<(Report, Destination), SyncError> {
    let owner = Ownership::resolve(spec)?;
    let (to, wait) = (spec.to.clone(), bounds.timeout);
    let mut dest = tokio::task::spawn_blocking(move || Destination::open(&to, wait))
        .await
        .map_err(|e| SyncError::Settings(format!("destination lock task: {e}")))??;
    dest.set_keep(spec.keep);
    dest.set_verify(spec.verify.is_some());
    dest.set_hook(hook);
    let report = match origin {
        Origin::Bundle(bundle) => {
            bundle::pass(bundle, &mut dest, spec, &owner, counters, bytes, deadline).await?
        }
        Origin::Prefix(source) => {
            prefix_passes(source, &mut dest, spec, &owner, bounds, counters, bytes).await?
        }
    };
    Ok((report, dest))
}

/// A prefix's pass, started over from a fresh LIST when an object changes mid-pass.
async fn prefix_passes(
    source: &Source,
    dest: &mut Destination,
    spec: &SyncSpec,
    owner: &Ownership,
    bounds: Bounds,
    counters: &Counters,
    bytes: &AtomicU64,
) -> Result<Report, SyncError> {
    let mut pass = 1;
    loop {
        match pass_once(
            source,
            dest,
            spec,
            owner,
            bounds.concurrency,
            counters,
            bytes,
        )
        .await
        {
            Err(SyncError::Source(SourceError::Changed { key })) if pass < PASSES => {
                tracing::info!(key, pass, "an object changed while syncing; listing again");
                pass += 1;
            }
            other => return other,
        }
    }
}

fn summarize(reports: &[Report]) -> String {
    let objects: usize = reports.iter().map(|r| r.objects).sum();
    let downloaded: usize = reports.iter().map(|r| r.downloaded).sum();
    let swapped = reports.iter().filter(|r| r.swapped).count();
    format!(
        "synced {} destination(s): {objects} objects, {downloaded} downloaded, {swapped} swapped in",
        reports.len()
    )
}

/// What a pass that ran out of time failed with last, for [`SyncError::Deadline`].
fn last_error_of(e: &SyncError) -> String {
    let why = match e {
        SyncError::Source(SourceError::Failed { why, .. } | SourceError::Throttled { why, .. }) => {
            why.clone()
        }
        other => other.to_string(),
    };
    format!("; last error: {why}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watcher_takes_the_parameters_watch_settings_over_its_flags_but_sqs() {
        let minutes = |m| Duration::from_secs(60 * m);
        let spec = |sqs: Option<&str>, interval: Option<u64>, secrets: Option<u64>| WatchSpec {
            sqs: sqs.map(str::to_string),
            interval: interval.map(minutes),
            secrets_interval: secrets.map(minutes),
        };
        let (flag_q, params_q) = (
            Some("https://sqs.local/flag"),
            Some("https://sqs.local/params"),
        );
        // (--sqs, the parameters' bootstage.watch; none for a --from/--to watcher) → what
        // the watcher does; `--watch` is 10 minutes.
        let cases = [
            (None, None, spec(None, Some(10), None)),
            (flag_q, None, spec(flag_q, Some(10), None)),
            (
                None,
                Some(spec(None, None, None)),
                spec(None, Some(10), None),
            ),
            (
                None,
                Some(spec(params_q, Some(2), Some(60))),
                spec(params_q, Some(2), Some(60)),
            ),
            (
                flag_q,
                Some(spec(params_q, Some(2), None)),
                spec(flag_q, Some(2), None),
            ),
            (
                flag_q,
                Some(spec(None, None, Some(5))),
                spec(flag_q, Some(10), Some(5)),
            ),
        ];
        for (sqs, params, expected) in cases {
            let got = watch_spec(minutes(10), sqs.map(str::to_string), params.clone());
            assert_eq!(got, expected, "--sqs {sqs:?}, {params:?}");
        }
    }
}
