//! The `hooks` stage: the operator's one-time and every-boot setup, after the sync and
//! before the app.
//!
//! Executables in `<hooks dir>/per-instance.d/` run once per instance id, then those in
//! `<hooks dir>/per-boot.d/` on every boot; each directory in byte order of the file names,
//! one at a time, in a clean environment: a fixed `PATH`, the locale and time zone of
//! bootstage's own (`LANG`, `LC_ALL`, `TZ`), the parameters from user-data and the facts
//! (`hooks.env`: `params.env` less what an import brought, which no root hook sees),
//! `HOME` (the home of the user running bootstage, whatever a parameter says),
//! `BOOTSTAGE_HOOK` (e.g. `per-instance.d/10-disk`) and `BOOTSTAGE_STATE_DIR`. Nothing
//! else of the caller's environment (a shell's `PERL5OPT`, a unit's `Environment=`)
//! reaches a root hook; an imported value is read with `bootstage query` if a hook needs
//! it, as data.
//!
//! Which files run: regular files (symlinks followed) that are executable. Names starting
//! with `.`, editor backups (`~`) and package-manager leftovers (`.dpkg-old`, `.dpkg-new`,
//! `.dpkg-dist`, `.dpkg-tmp`, `.ucf-*`, `.rpmnew`, `.rpmsave`) are skipped; so is a file
//! without an execute bit, with a warning (that is how to switch a hook off).
//!
//! Hooks run as root, so only root may be able to change one, as sshd's StrictModes
//! requires of a key file: the hook (a symlink resolved) must be owned by root (or the
//! user running bootstage) and not group- or world-writable, and so must every directory
//! from `/` down to it, and the directory holding a symlinked hook. Every symlink
//! followed on the way (the hook's, and any link it leads through) is resolved one at a
//! time and must be owned by root (or that user) in such a directory: a link its owner
//! could re-point would let them choose which root-owned program runs. One exception, the
//! unsafe-transition rule of systemd's `chase()` (and `sync::fsat`): a sticky directory
//! others can write (`/tmp`) may be on the way, since the entry below it must be owned by
//! root (or that user) too, and the sticky bit lets nobody else rename or remove it. The
//! directory the hooks are listed from is never excused: anyone could add a hook to it.
//! One hook that fails the check fails the stage before any hook runs (exit 77), naming
//! the path and why. The checked, resolved path is what is executed: since nobody but
//! root can change any directory on it, nobody can swap the file between the check and
//! the exec.
//!
//! The same rules hold for the hooks of the instance's later life, each directory run by
//! whoever sees its moment ([`run_kinds`]): `per-start.d/` each time the instance goes
//! into service (after the boot's hooks, and again when it leaves a warm pool),
//! `drain.d/`, `rebalance.d/`, `rebalance-undo.d/` and `maintenance.d/` (the lifecycle
//! watcher, with the event in `BOOTSTAGE_*` variables).
//!
//! A run holds the state dir's lock while hooks run and checks each per-instance marker
//! under it, so two runs at once (the unit, and `bootstage hooks` by hand or a `launch`)
//! never run a one-time hook twice.
//!
//! A per-instance hook that succeeded leaves a marker in
//! `<lib dir>/instances/<instance-id>/per-instance.d/<name>`. The instance id is part of the
//! path, so an image baked from a running instance carries that instance's markers and a
//! new instance booted from it still runs its hooks. A hook that fails (or outlives
//! `--hook-timeout`, counted over all hooks) ends the stage with its name and exit code,
//! leaves no marker, and runs no later hook.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::base::child;
use crate::base::notify::Notifier;
use crate::base::retry::Deadline;
use crate::imds::facts::Facts;
use crate::stage::error::{Error, Result};
use crate::stage::error::{ExitCode, ExitStatus};
use crate::stage::metadata;
use crate::stage::s3sync;
use crate::state::StateDir;
use crate::state::atomic;
use crate::state::status::{self, Stage};

/// A hook's `PATH`: the system's, never the caller's.
const HOOK_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The only variables a hook gets from bootstage's own environment.
const KEPT: &[&str] = &["LANG", "LC_ALL", "TZ"];

pub const DEFAULT_HOOKS_DIR: &str = "/etc/bootstage/hooks";
pub const DEFAULT_LIB_DIR: &str = "/var/lib/bootstage";
pub const DEFAULT_HOOK_TIMEOUT: &str = "10m";

/// The `hooks` stage as its unit runs it.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Re-run the metadata stage and every configured sync first.
    pub refresh: bool,
    pub dirs: HookDirs,
    /// For running the metadata stage first when its outputs are missing.
    pub metadata: metadata::Settings,
}

/// Where the hooks and their markers are, and how long they may take together.
#[derive(Debug, Clone)]
pub struct HookDirs {
    /// `per-instance.d/` and `per-boot.d/` are in it.
    pub hooks_dir: PathBuf,
    /// `instances/INSTANCE-ID/` is in it.
    pub lib_dir: PathBuf,
    pub hook_timeout: std::time::Duration,
}

/// A directory of hooks: when its hooks run, and what each is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Once per instance id (a marker each), in the boot's `hooks` stage.
    PerInstance,
    /// On every boot, in the boot's `hooks` stage.
    PerBoot,
    /// Each time the instance goes into service: after a boot, and again when it leaves
    /// a warm pool (a resume from hibernation is no boot), before the app starts.
    PerStart,
    /// Before the instance leaves: scale-in, a Spot interruption, a retiring event.
    Drain,
    /// Once per rebalance recommendation: an elevated risk of interruption.
    Rebalance,
    /// When no interruption followed a rebalance recommendation in time.
    RebalanceUndo,
    /// Once per scheduled maintenance event, before it begins.
    Maintenance,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::PerInstance,
        Kind::PerBoot,
        Kind::PerStart,
        Kind::Drain,
        Kind::Rebalance,
        Kind::RebalanceUndo,
        Kind::Maintenance,
    ];

    pub fn dir(self) -> &'static str {
        match self {
            Kind::PerInstance => "per-instance.d",
            Kind::PerBoot => "per-boot.d",
            Kind::PerStart => "per-start.d",
            Kind::Drain => "drain.d",
            Kind::Rebalance => "rebalance.d",
            Kind::RebalanceUndo => "rebalance-undo.d",
            Kind::Maintenance => "maintenance.d",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("hook {name} {why}")]
    Failed { name: String, why: String },
    #[error(
        "per-instance hooks need the instance id, and instance.json has none (off-cloud: --fact instance-id=NAME)"
    )]
    NoInstanceId,
    #[error("instance id {0:?} cannot name a directory")]
    BadInstanceId(String),
    #[error("hook {} is not safe to run as root: {why}", path.display())]
    Untrusted { path: PathBuf, why: String },
}

/// The stage as its unit runs it: earlier stages first if their outputs are missing (run
/// by hand), then the hooks. Returns the READY summary.
pub async fn run(state: &StateDir, args: &Settings, notifier: Notifier) -> Result<String> {
    metadata::ensure(state, &args.metadata, args.refresh, notifier).await?;
    s3sync::sync_missing(state, args.refresh, notifier).await?;
    status::track(state, Stage::Hooks, run_hooks(state, &args.dirs, notifier)).await
}

/// For `launch`: runs the stage unless it is already done this boot (or with `refresh`).
pub async fn ensure(
    state: &StateDir,
    dirs: &HookDirs,
    refresh: bool,
    notifier: Notifier,
) -> Result<()> {
    if refresh || !status::is_done(state, Stage::Hooks) {
        status::track(state, Stage::Hooks, run_hooks(state, dirs, notifier)).await?;
    }
    Ok(())
}

async fn run_hooks(state: &StateDir, args: &HookDirs, notifier: Notifier) -> Result<String> {
    warn_misplaced(&args.hooks_dir);
    let deadline = Deadline::after(args.hook_timeout);
    let limit = format!(
        "{} (--hook-timeout, all hooks together)",
        humantime::format_duration(args.hook_timeout)
    );
    let (ran, skipped) = run_kinds(
        state,
        args,
        &[Kind::PerInstance, Kind::PerBoot],
        &[],
        deadline,
        &limit,
        notifier,
    )
    .await?;
    Ok(match ran + skipped {
        0 => "no hooks".into(),
        _ => format!("hooks done: {ran} ran, {skipped} per-instance already ran"),
    })
}

/// Runs the hooks of each of `kinds`, in that order, with `extra` variables beside the
/// usual ones (`BOOTSTAGE_DRAIN_REASON`…), all within `deadline` (`limit` says what
/// it is, for the error of a hook killed at it). Every hook is checked
/// before the first runs; the first that fails ends the run. Returns how many ran and
/// how many per-instance hooks had already run.
pub async fn run_kinds(
    state: &StateDir,
    args: &HookDirs,
    kinds: &[Kind],
    extra: &[(String, String)],
    deadline: Deadline,
    limit: &str,
    notifier: Notifier,
) -> Result<(usize, usize)> {
    let mut listed = Vec::new();
    for &kind in kinds {
        listed.push((kind, list(&args.hooks_dir.join(kind.dir()))?));
    }
    if listed.iter().all(|(_, hooks)| hooks.is_empty()) {
        return Ok((0, 0));
    }
    // Every hook is checked before the first runs: a refused one runs nothing.
    let mut resolved = std::collections::HashMap::new();
    for (kind, hooks) in &listed {
        for hook in hooks {
            let path = args.hooks_dir.join(kind.dir()).join(hook);
            resolved.insert(path.clone(), trusted(&path)?);
        }
    }
    // One run at a time: a per-instance marker is checked under the lock.
    let _lock = state.lock(deadline).await?;
    let env = state.load_hooks_env()?;
    let home = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map_or_else(|| PathBuf::from("/"), |u| u.dir);
    let markers = match listed
        .iter()
        .any(|(kind, hooks)| *kind == Kind::PerInstance && !hooks.is_empty())
    {
        true => Some(marker_dir(state, &args.lib_dir)?),
        false => None,
    };
    let (mut ran, mut skipped) = (0, 0);
    for (kind, hooks) in listed {
        for hook in hooks {
            let name = format!("{}/{}", kind.dir(), hook.to_string_lossy());
            let marker = match (kind, &markers) {
                (Kind::PerInstance, Some(dir)) => Some(dir.join(kind.dir()).join(&hook)),
                _ => None,
            };
            if marker.as_ref().is_some_and(|m| m.exists()) {
                tracing::info!(hook = name, "already ran on this instance");
                skipped += 1;
                continue;
            }
            notifier.status(&format!("running hook {name}"));
            tracing::info!(hook = name, "running hook");
            let path = args.hooks_dir.join(kind.dir()).join(&hook);
            let mut command = tokio::process::Command::new(&resolved[&path]);
            command
                .env_clear()
                .env("PATH", HOOK_PATH)
                .envs(KEPT.iter().filter_map(|k| Some((k, std::env::var_os(k)?))))
                .envs(env.iter().map(|(k, v)| (k, v)))
                .envs(extra.iter().map(|(k, v)| (k, v)))
                .env("HOME", &home)
                .env("BOOTSTAGE_HOOK", &name)
                .env("BOOTSTAGE_STATE_DIR", state.root())
                .stdin(std::process::Stdio::null());
            let failed = |why: String| HookError::Failed {
                name: name.clone(),
                why,
            };
            match child::run_bounded(command, deadline.remaining()).await {
                Ok(status) if status.success() => {}
                Ok(status) => return Err(failed(child::describe(status)).into()),
                Err(child::ChildError::TimedOut(_)) => {
                    return Err(failed(format!("did not finish within {limit}; killed")).into());
                }
                // The kernel runs a script only with an interpreter named on its first line.
                Err(child::ChildError::Spawn(source))
                    if source.raw_os_error() == Some(nix::libc::ENOEXEC) =>
                {
                    return Err(failed(format!(
                        "cannot start: {source}: a hook needs a #! line first (e.g. #!/bin/sh), or to be a program"
                    ))
                    .into());
                }
                Err(e) => return Err(failed(e.to_string()).into()),
            }
            ran += 1;
            if let Some(marker) = marker {
                write_marker(&marker)?;
            }
        }
    }
    Ok((ran, skipped))
}

/// Hooks that would never run, said before the run: a hooks dir that does not exist (a
/// mistyped `--hooks-dir`), and hooks put in `per-boot/` or `per-instance/` without `.d`.
fn warn_misplaced(hooks_dir: &Path) {
    if std::fs::symlink_metadata(hooks_dir).is_err() {
        tracing::warn!(
            "the hooks dir {} does not exist: no hooks run (hooks go in per-instance.d/ and \
             per-boot.d/ in it)",
            hooks_dir.display()
        );
        return;
    }
    for kind in Kind::ALL {
        let dir = kind.dir();
        let near = hooks_dir.join(dir.trim_end_matches(".d"));
        if std::fs::symlink_metadata(&near).is_ok() {
            tracing::warn!(
                "{} is not read: hooks go in {}/",
                near.display(),
                hooks_dir.join(dir).display()
            );
        }
    }
}

/// The hooks in `dir`, in byte order of their names; a missing dir holds none.
pub(crate) fn list(dir: &Path) -> Result<Vec<OsString>> {
    let read_error = |source| Error::Read {
        path: dir.to_path_buf(),
        source,
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(read_error(e)),
    };
    let mut hooks = Vec::new();
    for entry in entries {
        let name = entry.map_err(read_error)?.file_name();
        if !runnable_name(name.as_bytes()) {
            tracing::debug!(name = %name.to_string_lossy(), "not a hook name; skipped");
            continue;
        }
        let path = dir.join(&name);
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o111 != 0 => {
                hooks.push(name)
            }
            Ok(meta) if meta.is_file() => {
                tracing::warn!(path = %path.display(), "not executable; skipped")
            }
            Ok(_) => tracing::debug!(path = %path.display(), "not a file; skipped"),
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "skipped"),
        }
    }
    hooks.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(hooks)
}

fn runnable_name(name: &[u8]) -> bool {
    const LEFTOVERS: [&[u8]; 6] = [
        b".dpkg-old",
        b".dpkg-new",
        b".dpkg-dist",
        b".dpkg-tmp",
        b".rpmnew",
        b".rpmsave",
    ];
    !name.starts_with(b".")
        && !name.ends_with(b"~")
        && !LEFTOVERS.iter().any(|l| name.ends_with(l))
        && !name.windows(5).any(|w| w == b".ucf-")
}

/// `<lib dir>/instances/<instance-id>/`, created 0700, from the facts in instance.json.
fn marker_dir(state: &StateDir, lib_dir: &Path) -> Result<PathBuf> {
    let path = state.instance_json();
    let text = std::fs::read(&path).map_err(|source| Error::Read {
        path: path.clone(),
        source,
    })?;
    let facts: Facts = serde_json::from_slice(&text).map_err(|e| Error::Read {
        path,
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })?;
    let id = facts.instance_id.ok_or(HookError::NoInstanceId)?;
    let safe = !id.is_empty()
        && id.len() <= 255
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !safe {
        return Err(HookError::BadInstanceId(id).into());
    }
    let dir = lib_dir.join("instances").join(id);
    let per_instance = dir.join(Kind::PerInstance.dir());
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&per_instance)
        .map_err(Error::write(&per_instance))?;
    Ok(dir)
}

fn write_marker(marker: &Path) -> Result<()> {
    let text = format!(
        "{{\"finished_at\": \"{}\"}}\n",
        status::timestamp(std::time::SystemTime::now())
    );
    atomic::write_file(marker, text.as_bytes())
        .map_err(|(path, source)| Error::Write { path, source })
}

impl From<HookError> for Error {
    fn from(e: HookError) -> Error {
        Error::Stage(Box::new(e))
    }
}

impl ExitStatus for HookError {
    fn exit_code(&self) -> ExitCode {
        match self {
            HookError::Untrusted { .. } => ExitCode::NoPerm,
            _ => ExitCode::HookFailed,
        }
    }
}

/// The hook at `path`, resolved, if only root (or we) can change it: the file and every
/// directory from `/` to it (and to the directory it is listed in, for a symlinked hook)
/// are owned by root or the effective user and writable by no one else, but for a sticky
/// directory above another on the way (see the module's doc).
fn trusted(path: &Path) -> std::result::Result<PathBuf, HookError> {
    use std::os::unix::fs::MetadataExt;
    let untrusted = |at: &Path, why: String| HookError::Untrusted {
        path: path.to_path_buf(),
        why: match at == path {
            true => why,
            false => format!("{} {why}", at.display()),
        },
    };
    let me = nix::unistd::geteuid().as_raw();
    // `at`, with `below` saying whether the walk goes on through an entry in it.
    let check = |at: &Path, below: bool| -> std::result::Result<(), HookError> {
        let meta = std::fs::symlink_metadata(at).map_err(|e| untrusted(at, e.to_string()))?;
        if meta.uid() != 0 && meta.uid() != me {
            return Err(untrusted(at, format!("is owned by uid {}", meta.uid())));
        }
        // Others may add entries to a sticky directory but not rename or remove the one
        // below it, which the next step checks is root's (or ours).
        let sticky_on_the_way = below && meta.is_dir() && meta.mode() & 0o1000 != 0;
        if meta.mode() & 0o022 != 0 && !sticky_on_the_way {
            return Err(untrusted(
                at,
                format!("is writable by others (mode {:o})", meta.mode() & 0o7777),
            ));
        }
        Ok(())
    };
    // Every directory from `/` down to `end`, each a step below the one before.
    let chain_to = |end: &Path| -> std::result::Result<(), HookError> {
        let mut chain: Vec<&Path> = end.ancestors().collect();
        chain.reverse();
        for at in chain {
            check(at, at != end)?;
        }
        Ok(())
    };
    // Each symlink on the way decides which file runs, so each must be root's, in a
    // directory only root can change: one the app owns (or a dangling link in /tmp) would
    // let its owner pick any root-owned program to run as a hook.
    let followed = |link: &Path, in_dir: &Path| -> std::result::Result<(), HookError> {
        let meta = std::fs::symlink_metadata(link).map_err(|e| untrusted(link, e.to_string()))?;
        if meta.uid() != 0 && meta.uid() != me {
            return Err(untrusted(
                link,
                format!("is a symlink owned by uid {}", meta.uid()),
            ));
        }
        chain_to(in_dir)
    };
    let absolute = std::path::absolute(path).map_err(|e| untrusted(path, e.to_string()))?;
    let real = resolve(&absolute, &followed).map_err(|e| match e {
        Resolve::Refused(e) => e,
        Resolve::Io(at, e) => untrusted(&at, e.to_string()),
    })?;
    // Where the hook is listed (what `list` reads), then the file that runs; each from `/`.
    let dir = absolute.parent().unwrap_or(Path::new("/"));
    let listed = resolve(dir, &followed).map_err(|e| match e {
        Resolve::Refused(e) => e,
        Resolve::Io(at, e) => untrusted(&at, e.to_string()),
    })?;
    for end in [&listed, &real] {
        chain_to(end)?;
    }
    Ok(real)
}

/// Why [`resolve`] stopped.
enum Resolve {
    Refused(HookError),
    Io(PathBuf, std::io::Error),
}

/// The absolute `path` with every symlink resolved as the kernel would, one component at
/// a time, `followed(link, its directory)` approving each link before it is followed.
fn resolve(
    path: &Path,
    followed: &dyn Fn(&Path, &Path) -> std::result::Result<(), HookError>,
) -> std::result::Result<PathBuf, Resolve> {
    use std::collections::VecDeque;
    use std::path::Component;
    let push_front = |todo: &mut VecDeque<OsString>, p: &Path| {
        for c in p.components().rev() {
            match c {
                Component::Normal(name) => todo.push_front(name.to_os_string()),
                Component::ParentDir => todo.push_front("..".into()),
                _ => {}
            }
        }
    };
    let mut todo = VecDeque::new();
    push_front(&mut todo, path);
    // `real` never holds a symlink, so `..` is its parent.
    let mut real = PathBuf::from("/");
    let mut links = 0;
    while let Some(name) = todo.pop_front() {
        if name == ".." {
            real.pop();
            continue;
        }
        let next = real.join(&name);
        let meta = std::fs::symlink_metadata(&next).map_err(|e| Resolve::Io(next.clone(), e))?;
        if !meta.file_type().is_symlink() {
            real = next;
            continue;
        }
        links += 1;
        if links > 40 {
            let e = std::io::Error::other("too many levels of symlinks");
            return Err(Resolve::Io(next, e));
        }
        followed(&next, &real).map_err(Resolve::Refused)?;
        let target = std::fs::read_link(&next).map_err(|e| Resolve::Io(next.clone(), e))?;
        if target.is_absolute() {
            real = PathBuf::from("/");
        }
        push_front(&mut todo, &target);
    }
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_names_run() {
        for name in ["10-disk", "setup.sh", "99_last", "a.b.c"] {
            assert!(runnable_name(name.as_bytes()), "{name}");
        }
        for name in [
            ".hidden",
            "10-disk~",
            "10-disk.dpkg-old",
            "10-disk.dpkg-dist",
            "x.ucf-dist",
            "y.rpmnew",
        ] {
            assert!(!runnable_name(name.as_bytes()), "{name}");
        }
    }
}
