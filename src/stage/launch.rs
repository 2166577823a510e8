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
use std::path::Path;

use crate::base::notify::Notifier;
use crate::cli::LaunchArgs;
use crate::error::{Error, Result};
use crate::stage::hooks;
use crate::stage::metadata;
use crate::stage::s3sync;
use crate::state::StateDir;

pub async fn run(state: &StateDir, args: &LaunchArgs, notifier: Notifier) -> Result<()> {
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
        Err(Error::Read { source, .. })
            if disabled.is_some() && source.kind() == std::io::ErrorKind::NotFound =>
        {
            Vec::new()
        }
        Err(e) => return Err(e),
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

/// The kill switch the units check with `ConditionPathExists=!` and
/// `ConditionKernelCommandLine=!`.
pub const DISABLED_FILE: &str = "/etc/bootstage/disabled";

/// Why bootstage is disabled on this machine, if it is.
pub fn disabled_reason() -> Option<String> {
    disabled(Path::new(DISABLED_FILE), Path::new("/proc/cmdline"))
}

fn disabled(marker: &Path, cmdline: &Path) -> Option<String> {
    if marker.exists() {
        return Some(format!("{} exists", marker.display()));
    }
    let cmdline = std::fs::read_to_string(cmdline).unwrap_or_default();
    cmdline
        .split_whitespace()
        .any(|word| word == "bootstage=disabled")
        .then(|| "bootstage=disabled on the kernel command line".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kill_switch() {
        let dir = tempfile::tempdir().unwrap();
        let (marker, cmdline) = (dir.path().join("disabled"), dir.path().join("cmdline"));
        std::fs::write(&cmdline, "ro quiet bootstage=enabled\n").unwrap();
        assert_eq!(disabled(&marker, &cmdline), None);
        std::fs::write(&cmdline, "ro bootstage=disabled quiet\n").unwrap();
        assert_eq!(
            disabled(&marker, &cmdline).as_deref(),
            Some("bootstage=disabled on the kernel command line")
        );
        std::fs::write(&marker, "").unwrap();
        assert!(
            disabled(&marker, &cmdline)
                .unwrap()
                .ends_with("disabled exists")
        );
    }
}
