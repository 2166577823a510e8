//! The `launch` stage: make sure the earlier stages' outputs exist, load `params.env` into
//! the environment with exactly the file's semantics, and exec the app, which then replaces
//! bootstage and becomes the unit's main process (free to use sd_notify itself: bootstage
//! sends nothing for it and leaves `NOTIFY_SOCKET` in place).
//!
//! Run by hand on a fresh machine, it runs what is missing in-process first: the metadata
//! stage when `params.env` is absent, then every configured sync whose destination is
//! absent, then the hooks unless they are done this boot; `--refresh` re-runs all of them.
//! When bootstage is disabled (the units' kill switch: `/etc/bootstage/disabled`, or
//! `bootstage=disabled` on the kernel command line) it runs no stage: the app starts with
//! whatever `params.env` holds, or without it.

use std::os::unix::process::CommandExt;

use crate::base::notify::Notifier;
use crate::base::switch::disabled_reason;
use crate::stage::error::{Error, Result};
use crate::stage::hooks;
use crate::stage::hooks::HookDirs;
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
    /// The app and its arguments.
    pub command: Vec<String>,
}

pub async fn run(state: &StateDir, args: &Settings, notifier: Notifier) -> Result<()> {
    let (program, rest) = args.command.split_first().ok_or_else(|| {
        Error::Usage("launch needs a command: bootstage launch -- CMD [ARGS…]".into())
    })?;
    let disabled = disabled_reason();
    if let Some(why) = &disabled {
        tracing::warn!("bootstage is disabled ({why}): running no stage");
    } else {
        metadata::ensure(state, &args.metadata, args.refresh, notifier).await?;
        s3sync::sync_missing(state, args.refresh, notifier).await?;
        hooks::ensure(state, &args.hooks, args.refresh, notifier).await?;
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
    tracing::info!(program, variables = vars.len(), "launching");
    let error = std::process::Command::new(program)
        .args(rest)
        .envs(vars)
        .exec();
    Err(Error::Exec {
        program: program.clone(),
        source: error,
    })
}
