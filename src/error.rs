//! The errors that end a stage, and the exit code each one maps to.
//!
//! Exit codes follow sysexits(3) so a unit (the watch-mode drop-in) can name the permanent
//! ones in `RestartPreventExitStatus=` and let systemd retry only what a retry can fix.
//! Messages never contain a parameter value, user-data content or a token.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::imds::ImdsError;
use crate::imds::userdata::DecodeError;
use crate::stage::s3sync::SyncError;
use crate::state::envfile::ExportError;

/// Process exit codes, documented in README.md ("Exit codes").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitCode {
    Ok = 0,
    /// `status`: a stage failed (or `--wait` ran out of time); `query`: no such key.
    Failed = 1,
    /// `status` without `--wait`: a stage is still pending or running.
    StillRunning = 2,
    /// EX_USAGE: bad flags or arguments. Permanent.
    Usage = 64,
    /// EX_DATAERR: user-data present but not valid parameters. Permanent.
    BadUserData = 65,
    /// EX_NOINPUT: the instance has no user-data (after the grace period). Permanent.
    NoUserData = 66,
    /// EX_UNAVAILABLE: IMDS is disabled, or IMDSv2 is required but not offered. Permanent.
    ImdsDisabled = 69,
    /// EX_SOFTWARE: a boot hook failed or outlived its deadline.
    HookFailed = 70,
    /// EX_CANTCREAT: an output file or the state dir cannot be written.
    CantCreate = 73,
    /// EX_TEMPFAIL: IMDS or S3 did not answer usefully before the deadline. A restart may help.
    TempFail = 75,
    /// EX_PROTOCOL: downloaded data failed verification (size or MD5).
    Protocol = 76,
    /// EX_NOPERM: the sync source refused access (AccessDenied, NoSuchBucket, bad keys), or
    /// a file cannot be read for lack of permission.
    NoPerm = 77,
    /// The shell's code: the app's command exists but cannot be executed.
    CannotExecute = 126,
    /// The shell's code: the app's command was not found.
    NotFound = 127,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),

    #[error("user-data is invalid: {0}")]
    BadUserData(#[from] DecodeError),

    #[error("parameters cannot be exported: {0}")]
    BadParams(#[from] ExportError),

    #[error(
        "this instance has no user-data (waited {}); give it bootstage parameters, or pass --allow-empty to boot with none",
        humantime::format_duration(std::time::Duration::from_millis(waited.as_millis() as u64))
    )]
    NoUserData { waited: Duration },

    #[error("{0}")]
    Imds(#[from] ImdsError),

    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },

    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },

    #[error("{0}")]
    Sync(#[from] SyncError),

    #[error("params.env cannot be read back: {0}")]
    EnvFile(#[from] crate::state::envfile::ParseError),

    #[error("{0}")]
    Hook(#[from] crate::stage::hooks::HookError),

    #[error("{0}")]
    Query(#[from] crate::stage::query::QueryError),

    #[error("{0}")]
    Notice(#[from] crate::stage::notice::NoticeError),

    #[error("cannot run {program:?}: {source}")]
    Exec { program: String, source: io::Error },
}

impl Error {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Error::Usage(_) => ExitCode::Usage,
            Error::BadUserData(_) | Error::BadParams(_) => ExitCode::BadUserData,
            Error::NoUserData { .. } => ExitCode::NoUserData,
            Error::Imds(e) if e.is_permanent() => ExitCode::ImdsDisabled,
            Error::Imds(_) => ExitCode::TempFail,
            Error::Read { source, .. } if source.kind() == io::ErrorKind::PermissionDenied => {
                ExitCode::NoPerm
            }
            Error::Read { .. } => ExitCode::NoUserData,
            Error::Write { .. } => ExitCode::CantCreate,
            Error::Sync(e) => e.exit_code(),
            Error::EnvFile(_) => ExitCode::BadUserData,
            Error::Hook(_) => ExitCode::HookFailed,
            Error::Query(e) => e.exit_code(),
            Error::Notice(crate::stage::notice::NoticeError::Config(_)) => ExitCode::BadUserData,
            Error::Notice(crate::stage::notice::NoticeError::Undelivered(_)) => ExitCode::TempFail,
            Error::Exec { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                ExitCode::NotFound
            }
            Error::Exec { .. } => ExitCode::CannotExecute,
        }
    }

    pub fn write(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
        let path = path.into();
        move |source| Error::Write { path, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
