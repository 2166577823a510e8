//! The error a stage or command ends with: any lower module's error, or one of the few
//! failures that belong to the stages themselves. Its exit code is the inner error's
//! ([`ExitStatus`]), so this file decides no exit code of another module's error.
//!
//! Messages never contain a parameter value, user-data content or a token.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

pub use crate::base::exit::{ExitCode, ExitStatus};
use crate::imds::ImdsError;
use crate::imds::userdata::DecodeError;
use crate::secrets::SecretError;
use crate::settings::SettingsError;
use crate::state::envfile::{ExportError, ParseError};
use crate::state::{StateDir, StateError};

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

    /// `--user-data-file` that cannot be read (missing: 66), named with the OS error.
    #[error("user-data file {}: {source}{}", path.display(), user_data_file_hint(source))]
    UserDataFile { path: PathBuf, source: io::Error },

    /// `--user-data-file` that is empty: no user-data, said of the file.
    #[error(
        "user-data file {} is empty; write the parameters in it, or pass --allow-empty to boot with none",
        path.display()
    )]
    EmptyUserDataFile { path: PathBuf },

    #[error("{0}")]
    Imds(#[from] ImdsError),

    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },

    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },

    #[error("{0}")]
    State(#[from] StateError),

    #[error("{0}")]
    Secret(#[from] SecretError),

    #[error("{0}")]
    Settings(#[from] SettingsError),

    #[error("params.env cannot be read back: {0}")]
    EnvFile(#[from] ParseError),

    /// A stage's own error (the sync's, the hooks' …), converted by `From` in its module.
    #[error("{0}")]
    Stage(Box<dyn StageFailure>),

    #[error("cannot run {program:?}: {source}")]
    Exec { program: String, source: io::Error },

    /// A command that needs root, run as another user: stopped by a path only root may
    /// use, said so, with why that path is root's.
    #[error(
        "cannot {verb} {} as uid {uid}: run as root (sudo bootstage {command}): {why}",
        path.display()
    )]
    NotRoot {
        command: &'static str,
        verb: &'static str,
        path: PathBuf,
        uid: u32,
        why: &'static str,
    },
}

/// An error type of one stage, boxed so that this file needs to know no stage: each stage
/// module writes `impl From<ItsError> for Error` (`Error::Stage(Box::new(e))`).
pub trait StageFailure: std::error::Error + ExitStatus + Send + Sync {}

impl<T: std::error::Error + ExitStatus + Send + Sync> StageFailure for T {}

/// The stages' own failures decide here; every wrapped error decides for itself.
impl ExitStatus for Error {
    fn exit_code(&self) -> ExitCode {
        match self {
            Error::Usage(_) => ExitCode::Usage,
            Error::NoUserData { .. } | Error::EmptyUserDataFile { .. } => ExitCode::NoInput,
            Error::UserDataFile { source, .. } => read_exit_code(source),
            Error::Read { source, .. } => read_exit_code(source),
            Error::Write { .. } => ExitCode::CantCreate,
            Error::Exec { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                ExitCode::NotFound
            }
            Error::Exec { .. } => ExitCode::CannotExecute,
            Error::NotRoot { .. } => ExitCode::NoPerm,
            Error::BadUserData(e) => e.exit_code(),
            Error::BadParams(e) => e.exit_code(),
            Error::Imds(e) => e.exit_code(),
            Error::State(e) => e.exit_code(),
            Error::Secret(e) => e.exit_code(),
            Error::Settings(e) => e.exit_code(),
            Error::EnvFile(e) => e.exit_code(),
            Error::Stage(e) => e.exit_code(),
        }
    }
}

/// An input that cannot be read: not ours to read (77), or not there (66).
pub fn read_exit_code(source: &io::Error) -> ExitCode {
    match source.kind() {
        io::ErrorKind::PermissionDenied => ExitCode::NoPerm,
        _ => ExitCode::NoInput,
    }
}

/// Where a missing user-data file's name came from, for whoever mistyped it.
fn user_data_file_hint(source: &io::Error) -> &'static str {
    match source.kind() {
        io::ErrorKind::NotFound => " (--user-data-file, or BOOTSTAGE_USER_DATA_FILE)",
        _ => "",
    }
}

/// Why the state dir is root's, for whoever meets it as another user.
pub const STATE_DIR_IS_ROOTS: &str = "the state dir is root's (0700), since it holds the \
     parameters and the credentials of secrets; the stages run as root from their units";

/// For a command that writes the state dir, run as a user other than root: stops it before
/// it writes anything (a status record, the lock) when the dir is root's.
pub fn require_root_for_state(state: &StateDir, command: &'static str) -> Result<()> {
    if nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    state.writable().map_err(|source| {
        Error::Write {
            path: state.root().to_path_buf(),
            source,
        }
        .as_other_user(command, STATE_DIR_IS_ROOTS)
    })
}

impl Error {
    /// This error, met by a user other than root on a path only root may use (permission
    /// denied), said so: run `command` as root, and `why` the path is root's.
    pub fn as_other_user(self, command: &'static str, why: &'static str) -> Error {
        let uid = nix::unistd::geteuid();
        let (verb, path, source) = match &self {
            Error::Read { path, source } | Error::State(StateError::Read { path, source }) => {
                ("read", path, source)
            }
            Error::Write { path, source } | Error::State(StateError::Write { path, source }) => {
                ("write", path, source)
            }
            _ => return self,
        };
        if uid.is_root() || source.kind() != io::ErrorKind::PermissionDenied {
            return self;
        }
        Error::NotRoot {
            command,
            verb,
            path: path.clone(),
            uid: uid.as_raw(),
            why,
        }
    }

    pub fn write(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
        let path = path.into();
        move |source| Error::Write { path, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
