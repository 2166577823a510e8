//! `bootstage image prepare`: readies a running instance to be captured as an image, so
//! that every instance booted from the image boots as a first boot.
//!
//! What it removes, and why none of it may travel in an image:
//! - **the synced destinations** the parameters name (`bootstage.sync[].to`): the link
//!   and its home (`.NAME.bootstage/`: the generations, their manifests and seals). They
//!   are what this instance's parameters fetched; an instance of the image syncs what its
//!   own parameters name, and a tree left behind would outlive a parameter that no longer
//!   names it. Only a destination bootstage made is removed (the link points into its
//!   home, the home is root's, writable by nobody else, with bootstage's `.lock`);
//!   anything else is left and said so, and the command fails.
//! - **everything in the lib dir** (`/var/lib/bootstage`): the per-instance markers
//!   (`instances/<id>/`), so no trace of this instance's one-time hooks remains.
//! - **everything in the state dir** (`/run/bootstage`), then the dir: the parameters and
//!   facts, the env files, the secrets' credential files, the status records, the
//!   lifecycle and warm-pool record (`lifecycle/`), `in-service.json`, `watch.json`.
//!
//! It prints one line for each path it removed (`--dry-run`: would remove), and refuses
//! to start while a bootstage unit is busy (starting, stopping, or running a process:
//! a watcher or a stage would write its state back): stop them, or `--force`. Units that
//! finished (active, exited) are no obstacle. Without systemd (a chroot, a container
//! build) there are no units to ask.
//!
//! Every removal is relative to a directory descriptor and never follows a symlink
//! (`sync::fsat`): a destination's parent may be an app user's; the state and lib dirs
//! are reached from `/` by `fsat::open_dir_path`, which follows only root's links.

use std::ffi::{OsStr, OsString};
use std::fs::{File, TryLockError};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::base::child;
use crate::settings::Bootstage;
use crate::stage::error::{Error, ExitCode, ExitStatus, Result};
use crate::state::StateDir;
use crate::sync::fsat;

/// `bootstage image prepare [--dry-run] [--force]`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// List what would be removed; remove nothing.
    pub dry_run: bool,
    /// Go on even while bootstage units are busy.
    pub force: bool,
    /// Where the per-instance markers are (`hooks::DEFAULT_LIB_DIR`).
    pub lib_dir: PathBuf,
    /// The `systemctl` that lists the units.
    pub systemctl: PathBuf,
}

/// How long `systemctl list-units` may take.
const SYSTEMCTL_LIMIT: Duration = Duration::from_secs(10);
/// How long to wait for a stage run by hand to let go of the state dir.
const LOCK_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(
        "bootstage units are busy: {}; a stage or watcher that is running would write its state back after it is removed. Stop them (systemctl stop {}), or pass --force",
        units.join(", "),
        units.iter().map(|u| u.split_whitespace().next().unwrap_or("")).collect::<Vec<_>>().join(" ")
    )]
    Busy { units: Vec<String> },
    #[error(
        "cannot ask systemd which bootstage units run ({0}); pass --force to go on without asking"
    )]
    Systemctl(String),
    #[error("cannot remove {}: {source}", path.display())]
    Remove {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} left in place, which an image must not carry: remove it by hand", left.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    Left { left: Vec<PathBuf> },
}

impl ExitStatus for ImageError {
    fn exit_code(&self) -> ExitCode {
        match self {
            ImageError::Busy { .. } | ImageError::Systemctl(_) => ExitCode::TempFail,
            ImageError::Remove { .. } | ImageError::Left { .. } => ExitCode::CantCreate,
        }
    }
}

impl From<ImageError> for Error {
    fn from(e: ImageError) -> Error {
        Error::Stage(Box::new(e))
    }
}

/// Whether a unit in this state may be writing bootstage's state: it is starting,
/// stopping or reloading, or its process runs. A unit that finished (`active exited`,
/// `inactive dead`, `failed failed`) or a target is no obstacle.
pub fn busy(active: &str, sub: &str) -> bool {
    matches!(
        active,
        "activating" | "deactivating" | "reloading" | "refreshing"
    ) || matches!(sub, "running" | "auto-restart" | "reload")
}

/// The busy units in `systemctl list-units --plain --no-legend` output, as
/// `UNIT (ACTIVE SUB)`.
fn busy_units(listing: &str) -> Vec<String> {
    listing
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let (unit, _load, active, sub) =
                (words.next()?, words.next()?, words.next()?, words.next()?);
            busy(active, sub).then(|| format!("{unit} ({active} {sub})"))
        })
        .collect()
}

/// The bootstage units that are busy now; none without systemd.
async fn units_busy(systemctl: &Path) -> Result<Vec<String>, ImageError> {
    // sd_booted(3): systemd runs this system when /run/systemd/system is a directory.
    if !Path::new("/run/systemd/system").is_dir() {
        return Ok(Vec::new());
    }
    let mut command = tokio::process::Command::new(systemctl);
    command
        .args([
            "list-units",
            "--all",
            "--plain",
            "--no-legend",
            "--no-pager",
            "--full",
            "bootstage*",
        ])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let output = tokio::time::timeout(SYSTEMCTL_LIMIT, command.output())
        .await
        .map_err(|_| ImageError::Systemctl(format!("no answer in {SYSTEMCTL_LIMIT:?}")))?
        .map_err(|e| ImageError::Systemctl(e.to_string()))?;
    if !output.status.success() {
        return Err(ImageError::Systemctl(format!(
            "{} list-units {}",
            systemctl.display(),
            child::describe(output.status)
        )));
    }
    Ok(busy_units(&String::from_utf8_lossy(&output.stdout)))
}

/// One path to remove: `name` in the directory `dir` (kept open from the check on), and
/// what it is, for the line that reports it.
struct Removal {
    dir: std::sync::Arc<OwnedFd>,
    name: OsString,
    path: PathBuf,
    what: String,
}

/// What a look found: removals, and what must stay (with why).
#[derive(Default)]
struct Plan {
    removals: Vec<Removal>,
    left: Vec<(PathBuf, String)>,
    /// Locks held until the removals are done (the state dir's, each destination's).
    locks: Vec<File>,
}

/// `bootstage image prepare`.
pub async fn prepare(state: &StateDir, args: &Settings) -> Result<()> {
    let busy = match units_busy(&args.systemctl).await {
        Ok(busy) => busy,
        Err(e) if args.force => {
            eprintln!("warning: {e}");
            Vec::new()
        }
        Err(e) => return Err(e.into()),
    };
    if !busy.is_empty() {
        if !args.force {
            return Err(ImageError::Busy { units: busy }.into());
        }
        eprintln!(
            "warning: going on with busy bootstage units (--force): {}; what they write after this is in the image",
            busy.join(", ")
        );
    }
    clean(state, args, &mut std::io::stdout().lock())
}

/// Removes (or with `dry_run`, lists) what must not travel, one line each on `out`.
fn clean(state: &StateDir, args: &Settings, out: &mut dyn std::io::Write) -> Result<()> {
    let mut plan = Plan::default();
    // The state dir's lock: no stage run by hand writes it while it goes.
    let state_dir = open_existing(state.root())?;
    if let Some(dir) = &state_dir
        && !args.dry_run
    {
        plan.locks.extend(take_lock(
            dir,
            OsStr::new(".lock"),
            state.root(),
            LOCK_WAIT,
        )?);
    }
    // The destinations are named by the parameters, which go with the state dir.
    for to in destinations(state) {
        destination(&to, args.dry_run, &mut plan)?;
    }
    if let Some(lib) = open_existing(&args.lib_dir)? {
        let lib = std::sync::Arc::new(lib);
        for name in sorted_names(&lib, &args.lib_dir)? {
            let path = args.lib_dir.join(&name);
            if name == "instances" {
                let instances = fsat::open_dir(&*lib, &name).map_err(remove_error(&path))?;
                let instances = std::sync::Arc::new(instances);
                for id in sorted_names(&instances, &path)? {
                    plan.removals.push(Removal {
                        dir: instances.clone(),
                        path: path.join(&id),
                        what: format!("per-instance markers of {}", id.to_string_lossy()),
                        name: id,
                    });
                }
                continue;
            }
            plan.removals.push(Removal {
                dir: lib.clone(),
                path,
                what: "bootstage's, in the lib dir".into(),
                name,
            });
        }
    }
    if let Some(dir) = state_dir {
        let dir = std::sync::Arc::new(dir);
        for name in sorted_names(&dir, state.root())? {
            plan.removals.push(Removal {
                dir: dir.clone(),
                path: state.root().join(&name),
                what: state_entry(&name).into(),
                name,
            });
        }
        // The dir itself, from its parent (reached as the dir was).
        if let (Some(parent), Some(name)) = (state.root().parent(), state.root().file_name())
            && let Some(parent_fd) = open_existing(parent)?
        {
            plan.removals.push(Removal {
                dir: std::sync::Arc::new(parent_fd),
                name: name.to_os_string(),
                path: state.root().to_path_buf(),
                what: "the state dir".into(),
            });
        }
    }
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    for removal in &plan.removals {
        if !args.dry_run {
            fsat::remove_tree(&removal.dir, &removal.name).map_err(remove_error(&removal.path))?;
        }
        let _ = writeln!(out, "{verb} {} ({})", removal.path.display(), removal.what);
    }
    if plan.removals.is_empty() && plan.left.is_empty() {
        let _ = writeln!(
            out,
            "nothing to remove: an instance of this image boots as a first boot"
        );
    }
    drop(plan.locks);
    for (path, why) in &plan.left {
        eprintln!("left {}: {why}", path.display());
    }
    if !plan.left.is_empty() {
        return Err(ImageError::Left {
            left: plan.left.into_iter().map(|(p, _)| p).collect(),
        }
        .into());
    }
    Ok(())
}

/// What a name in the state dir holds, for the line that reports it.
fn state_entry(name: &OsStr) -> &'static str {
    match name.as_bytes() {
        b"params.json" => "the parameters",
        b".values" => "the parameters' values behind their links",
        b"instance.json" => "the instance's facts",
        b"params.env" => "the parameters as environment",
        b"hooks.env" => "the hooks' environment",
        b"credentials" => "the secrets' credential files",
        b"status" => "the stages' status records",
        b"lifecycle" => "the lifecycle and warm-pool record",
        b"in-service.json" => "the in-service record",
        b"watch.json" => "the watch record",
        b"report" => "the status tags last written",
        b".lock" | b".in-service.lock" => "a lock",
        _ => "bootstage's, in the state dir",
    }
}

/// The destinations the parameters in the state dir name; none without parameters.
fn destinations(state: &StateDir) -> Vec<PathBuf> {
    let path = state.params_json();
    let params = match std::fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            eprintln!(
                "warning: cannot read {} ({e}): the synced destinations it names are not removed",
                path.display()
            );
            return Vec::new();
        }
    };
    let parsed = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&params)
        .map_err(|e| e.to_string())
        .and_then(|params| Bootstage::from_params(&params).map_err(|e| e.to_string()));
    match parsed {
        Ok(settings) => settings.sync.into_iter().map(|s| s.to).collect(),
        Err(why) => {
            eprintln!(
                "warning: {} cannot be read as parameters ({why}): the synced destinations it names are not removed",
                path.display()
            );
            Vec::new()
        }
    }
}

/// Plans the removal of one synced destination: its link and its home, if bootstage made
/// them; else says why they stay.
fn destination(to: &Path, dry_run: bool, plan: &mut Plan) -> Result<()> {
    let (Some(parent_path), Some(name)) = (to.parent(), to.file_name()) else {
        return Ok(());
    };
    let Some(parent) = open_existing(parent_path)? else {
        return Ok(());
    };
    let parent = std::sync::Arc::new(parent);
    let home_name = crate::sync::tree::home_name(name);
    let home_path = parent_path.join(&home_name);
    let home = match fsat::open_dir(&*parent, &home_name) {
        Ok(home) => Some(home),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            plan.left
                .push((home_path, format!("not a directory bootstage made ({e})")));
            return Ok(());
        }
    };
    if let Some(home) = &home {
        if let Err(why) = trusted_home(home) {
            plan.left.push((home_path, why));
            return Ok(());
        }
        if !dry_run {
            plan.locks
                .extend(take_lock(home, OsStr::new(".lock"), &home_path, LOCK_WAIT)?);
        }
    }
    match fsat::stat_at(&*parent, name) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(remove_error(to)(e).into()),
        Ok(st) => {
            let target = fsat::is_symlink(&st)
                .then(|| nix::fcntl::readlinkat(&*parent, name).ok())
                .flatten();
            let ours = target.as_ref().is_some_and(|t| {
                let t = Path::new(t);
                t.parent() == Some(Path::new(&home_name))
                    && t.file_name()
                        .is_some_and(|n| n.as_bytes().starts_with(b"gen-"))
            });
            if ours && home.is_some() {
                plan.removals.push(Removal {
                    dir: parent.clone(),
                    name: name.to_os_string(),
                    path: to.to_path_buf(),
                    what: "a synced destination: the link to its current generation".into(),
                });
            } else {
                plan.left.push((
                    to.to_path_buf(),
                    "named by bootstage.sync but not a link bootstage made".into(),
                ));
                return Ok(());
            }
        }
    }
    if home.is_some() {
        plan.removals.push(Removal {
            dir: parent,
            name: home_name,
            path: home_path,
            what: format!("the generations synced to {}", to.display()),
        });
    }
    Ok(())
}

/// A home bootstage made: a directory of this user's that nobody else may write, with
/// bootstage's `.lock` in it.
fn trusted_home(home: &OwnedFd) -> Result<(), String> {
    let st = nix::sys::stat::fstat(home).map_err(|e| e.to_string())?;
    let me = nix::unistd::geteuid().as_raw();
    if st.st_uid != me {
        return Err(format!(
            "owned by uid {}, not {me}: not bootstage's",
            st.st_uid
        ));
    }
    if st.st_mode & 0o022 != 0 {
        return Err(format!(
            "mode {:o} lets others write it: not bootstage's",
            st.st_mode & 0o7777
        ));
    }
    match fsat::stat_at(home, OsStr::new(".lock")) {
        Ok(st) if fsat::is_file(&st) => Ok(()),
        _ => Err("it has no .lock of bootstage's, so bootstage did not make it".into()),
    }
}

/// The directory at `path`, reached from `/` by root's links only; `None` if it is not
/// there.
fn open_existing(path: &Path) -> Result<Option<OwnedFd>, ImageError> {
    match fsat::open_dir_path(path, false) {
        Ok(fd) => Ok(Some(fd)),
        Err(fsat::WalkError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            Ok(None)
        }
        Err(fsat::WalkError::Io { at, source }) => Err(ImageError::Remove { path: at, source }),
        Err(fsat::WalkError::Symlink { at, why }) => Err(ImageError::Remove {
            path: at,
            source: std::io::Error::other(why),
        }),
    }
}

fn sorted_names(dir: &OwnedFd, path: &Path) -> Result<Vec<OsString>, ImageError> {
    let mut names = fsat::names(dir).map_err(remove_error(path))?;
    names.sort();
    Ok(names)
}

fn remove_error(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Remove {
        path: path.to_path_buf(),
        source,
    }
}

/// The lock file `name` in `dir` (bootstage's, as its writers take it), taken, waiting at
/// most `wait` for a run by hand to let go; `None` when there is none (no run ever took
/// it, and none is made: a dry run and a real one list the same paths).
fn take_lock(
    dir: &OwnedFd,
    name: &OsStr,
    path: &Path,
    wait: Duration,
) -> Result<Option<File>, ImageError> {
    use nix::fcntl::OFlag;
    let path = path.join(name);
    let flags = OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let file = match nix::fcntl::openat(dir, name, flags, nix::sys::stat::Mode::empty()) {
        Ok(fd) => File::from(fd),
        Err(nix::errno::Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(remove_error(&path)(fsat::io(e))),
    };
    let until = std::time::Instant::now() + wait;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(Some(file)),
            Err(TryLockError::WouldBlock) if std::time::Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(TryLockError::WouldBlock) => {
                let held = std::io::Error::new(
                    std::io::ErrorKind::WouldBlock,
                    "another bootstage run holds it: let it finish first",
                );
                return Err(remove_error(&path)(held));
            }
            Err(TryLockError::Error(e)) => return Err(remove_error(&path)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_units_are_busy() {
        for (active, sub, expected) in [
            ("active", "exited", false),
            ("active", "active", false),
            ("inactive", "dead", false),
            ("failed", "failed", false),
            ("active", "running", true),
            ("activating", "start", true),
            ("activating", "auto-restart", true),
            ("deactivating", "stop-sigterm", true),
            ("reloading", "reload", true),
            ("active", "reload", true),
        ] {
            assert_eq!(busy(active, sub), expected, "{active} {sub}");
        }
    }

    #[test]
    fn busy_units_from_a_listing() {
        let listing = "bootstage-hooks.service loaded active exited bootstage: boot hooks\n\
             bootstage-s3-sync.service loaded active running bootstage: sync\n\
             bootstage-in-service.service loaded activating start bootstage: in service\n\
             bootstage.target loaded active active bootstage\n";
        assert_eq!(
            busy_units(listing),
            [
                "bootstage-s3-sync.service (active running)",
                "bootstage-in-service.service (activating start)"
            ]
        );
    }

    /// A machine after a boot: a synced destination, an instance's markers, a state dir.
    fn booted(root: &Path) -> (StateDir, Settings) {
        use std::os::unix::fs::symlink;
        let home = root.join("srv/app/.config.bootstage");
        std::fs::create_dir_all(home.join("gen-1/sub")).unwrap();
        std::fs::write(home.join(".lock"), "").unwrap();
        std::fs::write(home.join("gen-1/sub/app.conf"), "port=1\n").unwrap();
        std::fs::write(home.join("gen-1.manifest.json"), "{}").unwrap();
        symlink(".config.bootstage/gen-1", root.join("srv/app/config")).unwrap();
        std::fs::create_dir_all(root.join("lib/instances/i-a/per-instance.d")).unwrap();
        std::fs::write(root.join("lib/instances/i-a/per-instance.d/10-x"), "{}").unwrap();
        let state = root.join("run/bootstage");
        std::fs::create_dir_all(state.join("status")).unwrap();
        std::fs::write(state.join("status/hooks.json"), "{}").unwrap();
        std::fs::write(state.join(".lock"), "").unwrap();
        let to = root.join("srv/app/config");
        let params =
            serde_json::json!({"bootstage": {"sync": [{"from": "s3://b/app/", "to": to}]}});
        std::fs::write(state.join("params.json"), params.to_string()).unwrap();
        let settings = Settings {
            dry_run: true,
            force: false,
            lib_dir: root.join("lib"),
            systemctl: "/nonexistent/systemctl".into(),
        };
        (StateDir::new(state), settings)
    }

    fn lines(state: &StateDir, args: &Settings) -> (Result<()>, String) {
        let mut out = Vec::new();
        let result = clean(state, args, &mut out);
        (result, String::from_utf8(out).unwrap())
    }

    #[test]
    fn a_dry_run_lists_what_a_run_removes_and_removes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path().display().to_string();
        let (state, mut args) = booted(dir.path());
        let (result, listed) = lines(&state, &args);
        result.unwrap();
        let expected = [
            format!(
                "{r}/srv/app/config (a synced destination: the link to its current generation)"
            ),
            format!("{r}/srv/app/.config.bootstage (the generations synced to {r}/srv/app/config)"),
            format!("{r}/lib/instances/i-a (per-instance markers of i-a)"),
            format!("{r}/run/bootstage/.lock (a lock)"),
            format!("{r}/run/bootstage/params.json (the parameters)"),
            format!("{r}/run/bootstage/status (the stages' status records)"),
            format!("{r}/run/bootstage (the state dir)"),
        ];
        let with = |verb: &str| {
            expected
                .iter()
                .map(|l| format!("{verb} {l}\n"))
                .collect::<String>()
        };
        assert_eq!(listed, with("would remove"));
        assert!(dir.path().join("srv/app/config/sub/app.conf").exists());
        assert!(
            dir.path()
                .join("lib/instances/i-a/per-instance.d/10-x")
                .exists()
        );
        assert!(state.params_json().exists());

        args.dry_run = false;
        let (result, removed) = lines(&state, &args);
        result.unwrap();
        assert_eq!(removed, with("removed"));
        assert_eq!(
            fsat_names(&dir.path().join("srv/app")),
            Vec::<String>::new()
        );
        assert_eq!(fsat_names(&dir.path().join("lib")), ["instances"]);
        assert_eq!(
            fsat_names(&dir.path().join("lib/instances")),
            Vec::<String>::new()
        );
        assert!(!state.root().exists());

        let (result, again) = lines(&state, &args);
        result.unwrap();
        assert_eq!(
            again,
            "nothing to remove: an instance of this image boots as a first boot\n"
        );
    }

    fn fsat_names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// What bootstage did not make stays, and a link is removed, never what it points to.
    #[test]
    fn what_bootstage_did_not_make_stays_and_no_link_is_followed() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let (state, mut args) = booted(dir.path());
        args.dry_run = false;
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("keep"), "theirs").unwrap();
        // The app swapped the destination's link for one of its own, and planted links in
        // the state dir and among the markers.
        let app = dir.path().join("srv/app");
        std::fs::remove_file(app.join("config")).unwrap();
        symlink(&outside, app.join("config")).unwrap();
        symlink(&outside, state.root().join("planted")).unwrap();
        symlink(&outside, dir.path().join("lib/instances/i-b")).unwrap();
        // A second destination whose home is not bootstage's (no .lock).
        std::fs::create_dir_all(app.join(".other.bootstage/gen-1")).unwrap();
        std::fs::write(app.join(".other.bootstage/gen-1/data"), "theirs").unwrap();
        let params = serde_json::json!({"bootstage": {"sync": [
            {"from": "s3://b/app/", "to": app.join("config")},
            {"from": "s3://b/other/", "to": app.join("other")},
        ]}});
        std::fs::write(state.params_json(), params.to_string()).unwrap();

        let (result, removed) = lines(&state, &args);
        let e = result.unwrap_err();
        assert_eq!(e.exit_code(), ExitCode::CantCreate, "{e}");
        let r = dir.path().display();
        assert_eq!(
            e.to_string(),
            format!(
                "{r}/srv/app/config, {r}/srv/app/.other.bootstage left in place, which an image must not carry: remove it by hand"
            )
        );
        assert!(
            removed.contains(&format!(
                "removed {r}/lib/instances/i-b (per-instance markers of i-b)\n"
            )),
            "{removed}"
        );
        assert!(
            removed.contains(&format!(
                "removed {r}/run/bootstage/planted (bootstage's, in the state dir)\n"
            )),
            "{removed}"
        );
        assert!(!removed.contains("srv/app"), "{removed}");
        assert_eq!(
            std::fs::read_to_string(outside.join("keep")).unwrap(),
            "theirs"
        );
        assert_eq!(
            std::fs::read_to_string(app.join(".other.bootstage/gen-1/data")).unwrap(),
            "theirs"
        );
        assert!(app.join(".config.bootstage/gen-1/sub/app.conf").exists());
        assert!(!state.root().exists());
    }
}
