//! The `launch` stage: make sure the earlier stages' outputs exist, load `params.env` into
//! the environment with exactly the file's semantics, and exec the app, which then replaces
//! bootstage and becomes the unit's main process (free to use sd_notify itself: bootstage
//! sends nothing for it and leaves `NOTIFY_SOCKET` in place).
//!
//! Run by hand on a fresh machine, it runs what is missing in-process first: the metadata
//! stage when `params.env` is absent, then every configured sync whose destination is
//! absent; `--refresh` re-runs all of them.

use std::os::unix::process::CommandExt;

use crate::cli::LaunchArgs;
use crate::envfile;
use crate::error::{Error, Result};
use crate::notify::Notifier;
use crate::state::StateDir;
use crate::{metadata, s3sync};

pub async fn run(state: &StateDir, args: &LaunchArgs, notifier: Notifier) -> Result<()> {
    let (program, rest) = args.command.split_first().ok_or_else(|| {
        Error::Usage("launch needs a command: bootstage launch -- CMD [ARGS…]".into())
    })?;
    if args.refresh || !state.exists(&state.params_env()) {
        tracing::info!("parameters missing or --refresh: running the metadata stage first");
        metadata::run(state, &args.metadata, notifier).await?;
    }
    s3sync::sync_missing(state, &args.metadata, args.refresh, notifier).await?;

    let path = state.params_env();
    let text = std::fs::read_to_string(&path).map_err(|source| Error::Read {
        path: path.clone(),
        source,
    })?;
    let vars = envfile::parse(&text, &path.display().to_string())?;
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
