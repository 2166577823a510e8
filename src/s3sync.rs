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
//!    replaced mid-sync makes the pass start over from a fresh LIST, up to 3 times;
//! 4. READY=1 after every destination is swapped in; with `--watch`, keep re-syncing.
//!
//! Any error discards the half-built generation: the destination keeps its old tree.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::TryStreamExt;
use serde::Deserialize;

use crate::cli::{MetadataArgs, SyncArgs};
use crate::error::{Error, ExitCode, Result};
use crate::keys::{self, KeyError};
use crate::notify::Notifier;
use crate::source::{Location, Object, Source, SourceError};
use crate::state::StateDir;
use crate::tree::{Destination, Entry, Manifest, TreeError};
use crate::{envfile, metadata};

/// How often a pass starts over because an object changed between LIST and GET.
const PASSES: u32 = 3;
/// Retries of one download whose transfer failed.
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
    #[error("{0}: the sync did not finish within --sync-timeout {1}")]
    Deadline(String, String),
}

impl SyncError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            SyncError::Settings(_)
            | SyncError::Key(_)
            | SyncError::Source(SourceError::BadUrl(_)) => ExitCode::BadUserData,
            SyncError::Source(SourceError::Refused { .. }) => ExitCode::NoPerm,
            SyncError::Source(SourceError::Corrupt { .. }) => ExitCode::Protocol,
            SyncError::Source(SourceError::Local { .. }) | SyncError::Tree(_) => {
                ExitCode::CantCreate
            }
            SyncError::Source(SourceError::Failed { .. } | SourceError::Changed { .. })
            | SyncError::Deadline(..) => ExitCode::TempFail,
        }
    }
}

/// One entry of `bootstage.sync`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SyncSpec {
    pub from: String,
    pub to: PathBuf,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default = "default_file_mode", deserialize_with = "octal")]
    pub file_mode: u32,
    #[serde(default = "default_dir_mode", deserialize_with = "octal")]
    pub dir_mode: u32,
}

fn default_file_mode() -> u32 {
    0o644
}

fn default_dir_mode() -> u32 {
    0o755
}

fn octal<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<u32, D::Error> {
    let text = String::deserialize(d)?;
    u32::from_str_radix(&text, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| {
            serde::de::Error::custom(format!("{text:?} is not an octal mode like \"0644\""))
        })
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

pub async fn run(state: &StateDir, args: &SyncArgs, notifier: Notifier) -> Result<()> {
    // In watch mode SIGTERM is ours to handle from the start, so a pass it interrupts is
    // dropped cleanly (its staging dir removed) and the process exits 0.
    let mut stop = match args.watch {
        Some(_) => Some(Stop::install().map_err(|e| Error::Write {
            path: "signal handler".into(),
            source: e,
        })?),
        None => None,
    };
    let specs = specs(state, args, notifier).await?;
    let first = sync_all(state, &specs, args, notifier);
    let reports = match &mut stop {
        Some(stop) => tokio::select! {
            reports = first => reports?,
            _ = stop.requested() => return Ok(()),
        },
        None => first.await?,
    };
    let summary = summarize(&reports);
    tracing::info!("{summary}");
    notifier.ready(&summary);
    match (args.watch, stop) {
        (Some(interval), Some(stop)) => watch(state, &specs, args, notifier, interval, stop).await,
        _ => Ok(()),
    }
}

/// For `launch` run by hand: syncs every configured destination that does not exist yet
/// (all of them with `refresh`), with the default bounds. Sends no READY.
pub async fn sync_missing(
    state: &StateDir,
    metadata: &MetadataArgs,
    refresh: bool,
    notifier: Notifier,
) -> Result<()> {
    let args = SyncArgs {
        from: None,
        to: None,
        concurrency: crate::cli::DEFAULT_CONCURRENCY,
        sync_timeout: humantime::parse_duration(crate::cli::DEFAULT_SYNC_TIMEOUT)
            .expect("a valid default"),
        refresh: false,
        watch: None,
        on_change: None,
        metadata: metadata.clone(),
    };
    let mut specs = specs(state, &args, notifier).await?;
    specs.retain(|s| refresh || std::fs::symlink_metadata(&s.to).is_err());
    if !specs.is_empty() {
        tracing::info!(
            destinations = specs.len(),
            "syncing what is missing before launch"
        );
        let reports = sync_all(state, &specs, &args, notifier).await?;
        tracing::info!("{}", summarize(&reports));
    }
    Ok(())
}

/// The destinations to sync: from flags, else from the parameters (fetched if missing).
async fn specs(state: &StateDir, args: &SyncArgs, notifier: Notifier) -> Result<Vec<SyncSpec>> {
    if let (Some(from), Some(to)) = (&args.from, &args.to) {
        return Ok(vec![SyncSpec {
            from: from.clone(),
            to: to.clone(),
            owner: None,
            group: None,
            file_mode: default_file_mode(),
            dir_mode: default_dir_mode(),
        }]);
    }
    if args.refresh || !state.exists(&state.params_json()) {
        tracing::info!("parameters missing or --refresh: running the metadata stage first");
        metadata::run(state, &args.metadata, notifier).await?;
    }
    let path = state.params_json();
    let text = std::fs::read(&path).map_err(|source| Error::Read {
        path: path.clone(),
        source,
    })?;
    let params: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| SyncError::Settings(format!("{}: not JSON ({e})", path.display())))?;
    let list = params
        .get(envfile::SETTINGS_KEY)
        .and_then(|b| b.get("sync"))
        .cloned();
    let specs: Vec<SyncSpec> = match list {
        None => Vec::new(),
        Some(list) => serde_json::from_value(list)
            .map_err(|e| SyncError::Settings(format!("bootstage.sync: {e}")))?,
    };
    for spec in &specs {
        if !spec.to.is_absolute() {
            return Err(SyncError::Settings(format!(
                "bootstage.sync: \"to\" must be an absolute path, not {:?}",
                spec.to
            ))
            .into());
        }
        Location::parse(&spec.from).map_err(SyncError::from)?;
    }
    let destinations: BTreeSet<&Path> = specs.iter().map(|s| s.to.as_path()).collect();
    if destinations.len() != specs.len() {
        return Err(SyncError::Settings(
            "bootstage.sync: two entries share one destination".into(),
        )
        .into());
    }
    Ok(specs)
}

/// Syncs every destination concurrently; READY comes only after all of them.
async fn sync_all(
    state: &StateDir,
    specs: &[SyncSpec],
    args: &SyncArgs,
    notifier: Notifier,
) -> Result<Vec<Report>> {
    if specs.is_empty() {
        tracing::warn!("nothing to sync: no --from/--to and no bootstage.sync in the parameters");
        return Ok(Vec::new());
    }
    let needs_s3 = specs.iter().any(|s| s.from.starts_with("s3://"));
    let client = match needs_s3 {
        true => Some(s3_client(state, args).await?),
        false => None,
    };
    let progress = Arc::new(Progress::new());
    let ticker = tokio::spawn(progress.clone().report(notifier));
    let passes = specs.iter().map(|spec| {
        let source = match Location::parse(&spec.from).map_err(SyncError::from)? {
            Location::S3 { bucket, prefix } => Source::S3 {
                client: client.clone().expect("built above"),
                bucket,
                prefix,
            },
            Location::Dir { root } => Source::Dir { root },
        };
        let progress = progress.clone();
        Ok::<_, SyncError>(async move {
            let pass = sync_one(
                &source,
                spec,
                args.concurrency.into(),
                args.sync_timeout,
                &progress,
            );
            match tokio::time::timeout(args.sync_timeout, pass).await {
                Ok(result) => result,
                Err(_) => Err(SyncError::Deadline(
                    spec.from.clone(),
                    humantime::format_duration(args.sync_timeout).to_string(),
                )),
            }
        })
    });
    let passes: Vec<_> = passes.collect::<std::result::Result<_, _>>()?;
    let results = futures_util::future::join_all(passes).await;
    ticker.abort();
    progress.finish();
    results
        .into_iter()
        .map(|r| r.map_err(Error::from))
        .collect()
}

/// One destination, starting over from a fresh LIST when an object changes mid-pass.
async fn sync_one(
    source: &Source,
    spec: &SyncSpec,
    concurrency: usize,
    sync_timeout: Duration,
    progress: &Progress,
) -> Result<Report, SyncError> {
    let owner = Ownership::resolve(spec)?;
    let (to, mode, wait) = (spec.to.clone(), spec.dir_mode, sync_timeout);
    let mut dest = tokio::task::spawn_blocking(move || Destination::open(&to, mode, wait))
        .await
        .map_err(|e| SyncError::Settings(format!("destination lock task: {e}")))??;
    let mut pass = 1;
    loop {
        match pass_once(source, &mut dest, spec, &owner, concurrency, progress).await {
            Err(SyncError::Source(SourceError::Changed { key })) if pass < PASSES => {
                tracing::info!(key, pass, "an object changed while syncing; listing again");
                pass += 1;
            }
            other => return other,
        }
    }
}

async fn pass_once(
    source: &Source,
    dest: &mut Destination,
    spec: &SyncSpec,
    owner: &Ownership,
    concurrency: usize,
    progress: &Progress,
) -> Result<Report, SyncError> {
    let started = std::time::Instant::now();
    let (objects, list_pages) = source.list().await?;
    let listed = started.elapsed();
    let mut files: Vec<(PathBuf, Object)> = Vec::with_capacity(objects.len());
    for object in objects {
        if let Some(rel) = keys::relative_path(&object.key, source.rest(&object.key))? {
            files.push((rel, object));
        }
    }
    keys::check_no_file_dir_conflict(files.iter().map(|(rel, o)| (o.key.as_str(), rel.as_path())))?;

    let url = source.url();
    let old = Some(dest.manifest())
        .filter(|m| m.source == url)
        .unwrap_or_default();
    let current = dest.current().map(Path::to_path_buf);
    let unchanged: Vec<bool> = files
        .iter()
        .map(|(rel, o)| {
            let listed = old.files.get(&*rel.to_string_lossy());
            let on_disk = current
                .as_ref()
                .and_then(|c| std::fs::symlink_metadata(c.join(rel)).ok());
            listed.is_some_and(|e| e.etag == o.etag && e.size == o.size)
                && on_disk.is_some_and(|m| m.is_file() && m.len() == o.size)
        })
        .collect();
    let names: BTreeSet<String> = files
        .iter()
        .map(|(rel, _)| rel.to_string_lossy().into_owned())
        .collect();
    let deleted = old.files.keys().filter(|k| !names.contains(*k)).count();
    let mut report = Report {
        objects: files.len(),
        deleted,
        list_pages,
        ..Report::default()
    };
    progress
        .total
        .fetch_add(files.len() as u64, Ordering::Relaxed);
    if current.is_some() && deleted == 0 && unchanged.iter().all(|u| *u) {
        progress
            .done
            .fetch_add(files.len() as u64, Ordering::Relaxed);
        return Ok(report);
    }

    let staging = dest.staging(spec.dir_mode)?;
    let root = staging.dir.clone();
    let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
    for (rel, _) in &files {
        dirs.extend(
            rel.ancestors()
                .skip(1)
                .filter(|d| !d.as_os_str().is_empty())
                .map(Path::to_path_buf),
        );
    }
    for dir in &dirs {
        let path = root.join(dir);
        std::fs::DirBuilder::new()
            .mode(spec.dir_mode)
            .create(&path)
            .map_err(local(&path))?;
    }
    let mut fetch = Vec::new();
    for ((rel, object), same) in files.iter().zip(&unchanged) {
        let linked = *same
            && current
                .as_ref()
                .is_some_and(|c| std::fs::hard_link(c.join(rel), root.join(rel)).is_ok());
        match linked {
            true => {
                progress.done.fetch_add(1, Ordering::Relaxed);
            }
            false => fetch.push((rel, object)),
        }
    }
    report.downloaded = fetch.len();
    let bytes = AtomicU64::new(0);
    futures_util::stream::iter(fetch.into_iter().map(Ok::<_, SyncError>))
        .try_for_each_concurrent(concurrency, |(rel, object)| {
            let (root, bytes) = (&root, &bytes);
            async move {
                let n = fetch_retrying(source, object, &root.join(rel)).await?;
                bytes.fetch_add(n, Ordering::Relaxed);
                progress.done.fetch_add(1, Ordering::Relaxed);
                progress.bytes.fetch_add(n, Ordering::Relaxed);
                Ok(())
            }
        })
        .await?;
    report.bytes = bytes.into_inner();
    let fetched = started.elapsed();

    for (rel, _) in &files {
        owner.apply(&root.join(rel), spec.file_mode)?;
    }
    for dir in dirs.iter().map(|d| root.join(d)).chain([root.clone()]) {
        owner.apply(&dir, spec.dir_mode)?;
    }
    let manifest = Manifest {
        source: url,
        files: files
            .iter()
            .map(|(rel, o)| {
                let entry = Entry {
                    key: o.key.clone(),
                    etag: o.etag.clone(),
                    size: o.size,
                };
                (rel.to_string_lossy().into_owned(), entry)
            })
            .collect::<BTreeMap<_, _>>(),
    };
    dest.commit(staging, &manifest)?;
    report.swapped = true;
    let ms = |d: Duration| d.as_millis() as u64;
    tracing::info!(
        dest = %spec.to.display(),
        objects = report.objects,
        downloaded = report.downloaded,
        deleted = report.deleted,
        bytes = report.bytes,
        list_ms = ms(listed),
        fetch_ms = ms(fetched - listed),
        commit_ms = ms(started.elapsed() - fetched),
        "swapped in a new generation"
    );
    Ok(report)
}

/// One object, retried when the transfer itself fails (a connection dropped mid-body is
/// past the SDK's own retries); the partial file is removed before each new attempt.
async fn fetch_retrying(source: &Source, object: &Object, to: &Path) -> Result<u64, SyncError> {
    use backon::{ExponentialBuilder, Retryable};
    let attempt = || async {
        let result = source.fetch(object, to).await;
        if result.is_err() {
            let _ = std::fs::remove_file(to);
        }
        result
    };
    let backoff = ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(1))
        .with_jitter()
        .with_max_times(FETCH_RETRIES);
    attempt
        .retry(backoff)
        .sleep(tokio::time::sleep)
        .when(|e| matches!(e, SourceError::Failed { .. }))
        .notify(|e, _| tracing::warn!("retrying a download: {e}"))
        .await
        .map_err(SyncError::from)
}

fn local(path: &Path) -> impl FnOnce(std::io::Error) -> SyncError + '_ {
    move |source| {
        SyncError::Source(SourceError::Local {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// A user or group given by number or by name, as chown(1) takes it.
fn lookup<T>(
    what: &str,
    given: Option<&str>,
    from_number: impl Fn(u32) -> T,
    by_name: impl Fn(&str) -> Option<T>,
) -> Result<Option<T>, SyncError> {
    let Some(given) = given else { return Ok(None) };
    let found = match given.parse::<u32>() {
        Ok(number) => Some(from_number(number)),
        Err(_) => by_name(given),
    };
    let missing =
        || SyncError::Settings(format!("{what} {given:?} does not exist on this machine"));
    found.map(Some).ok_or_else(missing)
}

/// The owner, group and modes a sync entry asks for.
struct Ownership {
    uid: Option<nix::unistd::Uid>,
    gid: Option<nix::unistd::Gid>,
}

impl Ownership {
    fn resolve(spec: &SyncSpec) -> Result<Ownership, SyncError> {
        use nix::unistd::{Gid, Group, Uid, User};
        let by_user = |n: &str| User::from_name(n).ok().flatten().map(|u| u.uid);
        let by_group = |n: &str| Group::from_name(n).ok().flatten().map(|g| g.gid);
        let uid = lookup("owner", spec.owner.as_deref(), Uid::from_raw, by_user)?;
        let gid = lookup("group", spec.group.as_deref(), Gid::from_raw, by_group)?;
        Ok(Ownership { uid, gid })
    }

    fn apply(&self, path: &Path, mode: u32) -> Result<(), SyncError> {
        if self.uid.is_some() || self.gid.is_some() {
            std::os::unix::fs::lchown(
                path,
                self.uid.map(|u| u.as_raw()),
                self.gid.map(|g| g.as_raw()),
            )
            .map_err(local(path))?;
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(local(path))
    }
}

async fn s3_client(state: &StateDir, args: &SyncArgs) -> Result<aws_sdk_s3::Client> {
    use aws_config::{BehaviorVersion, Region, retry::RetryConfig, timeout::TimeoutConfig};
    let endpoint = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()));
    // S3 over https is verified against the system's CA store. Check it before the SDK
    // builds its client: an image without one would otherwise fail every request with an
    // obscure TLS error (and a debug build asserts).
    let https = endpoint
        .as_deref()
        .is_none_or(|url| url.starts_with("https://"));
    if https && rustls_native_certs::load_native_certs().certs.is_empty() {
        let why = "this machine has no CA certificates (install ca-certificates): S3 over https cannot be verified";
        return Err(SyncError::Settings(why.into()).into());
    }
    let region = std::env::var("AWS_REGION")
        .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
        .ok()
        .filter(|r| !r.is_empty())
        .or_else(|| {
            let facts = std::fs::read(state.instance_json()).ok()?;
            serde_json::from_slice::<crate::facts::Facts>(&facts)
                .ok()?
                .region
        })
        .ok_or_else(|| {
            SyncError::Settings(
                "no AWS region: set AWS_REGION, or run the metadata stage on EC2".into(),
            )
        })?;
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(3))
        .read_timeout(Duration::from_secs(30))
        .operation_attempt_timeout(args.sync_timeout)
        .build();
    let shared = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region))
        .timeout_config(timeouts)
        .retry_config(RetryConfig::standard().with_max_attempts(5))
        .load()
        .await;
    let mut config = aws_sdk_s3::config::Builder::from(&shared);
    if let Some(url) = endpoint {
        tracing::info!(
            endpoint = url,
            "using a custom S3 endpoint with path-style addressing"
        );
        config = config.endpoint_url(url).force_path_style(true);
    }
    Ok(aws_sdk_s3::Client::from_conf(config.build()))
}

/// Counters behind the `STATUS=` lines, and the progress bar when stderr is a terminal.
struct Progress {
    total: AtomicU64,
    done: AtomicU64,
    bytes: AtomicU64,
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn new() -> Progress {
        let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
            let style = indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} objects, {msg} {elapsed}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            indicatif::ProgressBar::new(0).with_style(style)
        });
        Progress {
            total: AtomicU64::new(0),
            done: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            bar,
        }
    }

    async fn report(self: Arc<Self>, notifier: Notifier) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            let (done, total) = (
                self.done.load(Ordering::Relaxed),
                self.total.load(Ordering::Relaxed),
            );
            let mb = format!("{:.0} MB", self.bytes.load(Ordering::Relaxed) as f64 / 1e6);
            if let Some(bar) = &self.bar {
                bar.set_length(total);
                bar.set_position(done);
                bar.set_message(mb.clone());
            }
            notifier.status(&format!("syncing: {done}/{total} objects, {mb}"));
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
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

/// SIGTERM or SIGINT, as a future.
struct Stop {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Stop {
    fn install() -> std::io::Result<Stop> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Stop {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn requested(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        tracing::info!("stopping on a signal");
    }
}

/// `--watch`: re-sync every interval (one LIST per destination when nothing changed) until
/// SIGTERM. After a change is swapped in, run the `--on-change` hook between RELOADING=1
/// and READY=1. A failed pass keeps the old tree and is retried at the next interval.
async fn watch(
    state: &StateDir,
    specs: &[SyncSpec],
    args: &SyncArgs,
    notifier: Notifier,
    interval: Duration,
    mut stop: Stop,
) -> Result<()> {
    let watchdog = notifier.watchdog_interval().map(|every| {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                notifier.watchdog();
            }
        })
    });
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.requested() => break,
        }
        let reports = tokio::select! {
            reports = sync_all(state, specs, args, notifier) => reports,
            _ = stop.requested() => break,
        };
        match reports {
            Ok(reports) if reports.iter().any(|r| r.swapped) => {
                let summary = summarize(&reports);
                tracing::info!("{summary}");
                notifier.reloading();
                if let Some(hook) = &args.on_change {
                    run_hook(hook, &swapped(specs, &reports), args.sync_timeout).await;
                }
                notifier.ready(&summary);
            }
            Ok(_) => tracing::debug!("watch: no change"),
            Err(e) => {
                tracing::error!("watch: this pass failed, the old tree stays: {e}");
                notifier.status(&format!("last pass failed: {e}"));
            }
        }
    }
    if let Some(task) = watchdog {
        task.abort();
    }
    Ok(())
}

/// The destinations a pass swapped, `:`-separated, for the hook's `BOOTSTAGE_CHANGED`.
fn swapped(specs: &[SyncSpec], reports: &[Report]) -> String {
    let swapped = specs.iter().zip(reports).filter(|(_, r)| r.swapped);
    swapped
        .map(|(s, _)| s.to.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

/// Runs the change hook with `/bin/sh -c`, bounded; its failure is logged, never fatal.
async fn run_hook(hook: &str, changed: &str, limit: Duration) {
    let mut child = match tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(hook)
        .env("BOOTSTAGE_CHANGED", changed)
        .kill_on_drop(true)
        .spawn()
    {
        Ok(child) => child,
        Err(e) => return tracing::error!("--on-change: cannot start /bin/sh: {e}"),
    };
    match tokio::time::timeout(limit, child.wait()).await {
        Ok(Ok(status)) if status.success() => tracing::info!("--on-change hook done"),
        Ok(Ok(status)) => tracing::error!("--on-change hook failed: {status}"),
        Ok(Err(e)) => tracing::error!("--on-change hook: {e}"),
        Err(_) => tracing::error!("--on-change hook did not finish within --sync-timeout; killed"),
    }
}
