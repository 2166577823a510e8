//! The `launch` stage: make sure the earlier stages' outputs exist, load `params.env` into
//! the environment with exactly the file's semantics, and exec the app, which then replaces
//! bootstage and becomes the unit's main process (free to use sd_notify itself: bootstage
//! sends nothing for it and leaves `NOTIFY_SOCKET` in place).
//!
//! Run by hand on a fresh machine, it runs what is missing in-process first: the metadata
//! stage when `params.env` is absent, then every configured sync whose destination is
//! absent, then the hooks unless they are done this boot; `--refresh` re-runs all of them.
//! Then it goes into service (`in_service`) unless that is done this boot: on an instance
//! of a warm pool it waits there, saying so in `STATUS=`, and the app never starts
//! before the instance is in service (SIGTERM meanwhile: exit 0, no app).
//! When bootstage is disabled (the units' kill switch: `/etc/bootstage/disabled`, or
//! `bootstage=disabled` on the kernel command line) it runs no stage: the app starts with
//! whatever `params.env` holds, or without it.
//!
//! An app under its own `User=` cannot read root's `/run/bootstage` (0700). Its unit gets
//! the file as a systemd credential instead (`LoadCredential=bootstage.env:/run/bootstage/
//! params.env`): when `$CREDENTIALS_DIRECTORY/bootstage.env` exists, `launch` reads it and
//! runs no stage and does not look at the warm pool (the unit orders itself after
//! `bootstage-in-service.target`, which is reached only in service). When it can read
//! neither, it exits 77 with the two lines to add to the unit, instead of trying to run a
//! stage it has no right to.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;

use crate::base::notify::Notifier;
use crate::base::switch::disabled_reason;
use crate::stage::error::{Error, ExitCode, ExitStatus, Result};
use crate::stage::hooks;
use crate::stage::hooks::HookDirs;
use crate::stage::in_service;
use crate::stage::metadata;
use crate::stage::s3sync;
use crate::state::{StateDir, StateError};

/// What `launch` runs, and what it runs first when missing.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Re-run the metadata stage, every configured sync and the hooks first.
    pub refresh: bool,
    pub hooks: HookDirs,
    pub metadata: metadata::Settings,
    /// Going into service first (a warm pool's instance waits for it).
    pub start: in_service::Settings,
    /// The app and its arguments.
    pub command: Vec<String>,
}

/// The credential name an app's unit gives `params.env` (`LoadCredential=`).
pub const CREDENTIAL: &str = "bootstage.env";

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(
        "cannot read {} as uid {uid}: it is root's. Give the app's unit these lines:\n  Requires=bootstage-in-service.target\n  After=bootstage-in-service.target\n  LoadCredential={CREDENTIAL}:{}",
        path.display(),
        path.display()
    )]
    NotReadable { path: PathBuf, uid: u32 },
}

impl From<LaunchError> for Error {
    fn from(e: LaunchError) -> Error {
        Error::Stage(Box::new(e))
    }
}

impl ExitStatus for LaunchError {
    fn exit_code(&self) -> ExitCode {
        ExitCode::NoPerm
    }
}

pub async fn run(state: &StateDir, args: &Settings, notifier: Notifier) -> Result<()> {
    let (program, rest) = args.command.split_first().ok_or_else(|| {
        Error::Usage("launch needs a command: bootstage launch -- CMD [ARGS…]".into())
    })?;
    if let Some(path) = crate::state::credential(CREDENTIAL) {
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Read {
            path: path.clone(),
            source,
        })?;
        let vars = crate::state::envfile::parse(&text, &path.display().to_string())?;
        tracing::info!(
            program,
            variables = vars.len(),
            "launching with the parameters of the credential {CREDENTIAL}"
        );
        return exec(program, rest, vars);
    }
    // Not root's to read: say how to pass it, rather than run a stage that cannot write.
    if let Err(e) = std::fs::File::open(state.params_env())
        && e.kind() == std::io::ErrorKind::PermissionDenied
    {
        let uid = nix::unistd::geteuid().as_raw();
        let path = state.params_env();
        return Err(LaunchError::NotReadable { path, uid }.into());
    }
    let disabled = disabled_reason();
    if let Some(why) = &disabled {
        tracing::warn!("bootstage is disabled ({why}): running no stage");
    } else {
        metadata::ensure(state, &args.metadata, args.refresh, notifier).await?;
        s3sync::sync_missing(state, args.refresh, notifier).await?;
        hooks::ensure(state, &args.hooks, args.refresh, notifier).await?;
        // In a warm pool the app waits for service; stopped meanwhile, it never starts.
        if !in_service::ensure(state, &args.start, notifier).await? {
            return Ok(());
        }
    }
    let vars = match state.load_env() {
        Ok(vars) => vars,
        Err(StateError::Read { source, .. })
            if disabled.is_some() && source.kind() == std::io::ErrorKind::NotFound =>
        {
            Vec::new()
        }
        Err(e) => return Err(e.into()),
    };
    // An app that runs as root with imported variables runs with values whoever writes
    // the import path chose (hooks never get them: `hooks.env`). Say so at each launch.
    if nix::unistd::geteuid().is_root()
        && let Ok(hooks) = state.load_hooks_env()
    {
        let hooks: std::collections::BTreeSet<&str> =
            hooks.iter().map(|(k, _)| k.as_str()).collect();
        let imported = vars
            .iter()
            .filter(|(k, _)| !hooks.contains(k.as_str()))
            .count();
        if imported > 0 {
            tracing::warn!(
                imported,
                "the app runs as root with variables an import set: run it as its own user (User=, systemd/examples/myapp-user.service)"
            );
        }
    }
    tracing::info!(program, variables = vars.len(), "launching");
    exec(program, rest, vars)
}

/// Replaces this process with the app; returns only if that fails.
fn exec(program: &String, rest: &[String], vars: Vec<(String, String)>) -> Result<()> {
    let error = std::process::Command::new(program)
        .args(rest)
        .envs(vars)
        .exec();
    Err(Error::Exec {
        program: program.clone(),
        source: error,
    })
}
