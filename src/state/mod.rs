//! The state directory (`--state-dir`, default `/run/bootstage`): where each stage's
//! output lives, and the lock that keeps two runs (the unit and a person at a shell)
//! from writing it at once.

pub mod atomic;
pub mod envfile;
pub mod lifecycle;
pub mod status;
pub mod values;
pub mod watch;

use std::fs::{self, DirBuilder, File, OpenOptions, TryLockError};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::base::exit::{ExitCode, ExitStatus};
use crate::base::retry::Deadline;
use crate::state::envfile::ParseError;

/// What can go wrong with the state dir itself.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("params.env cannot be read back: {0}")]
    EnvFile(#[from] ParseError),
}

impl ExitStatus for StateError {
    fn exit_code(&self) -> ExitCode {
        match self {
            StateError::Read { source, .. }
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                ExitCode::NoPerm
            }
            StateError::Read { .. } => ExitCode::NoInput,
            StateError::Write { .. } => ExitCode::CantCreate,
            StateError::EnvFile(e) => e.exit_code(),
        }
    }
}

fn write_error(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Write {
        path: path.to_path_buf(),
        source,
    }
}

type Result<T, E = StateError> = std::result::Result<T, E>;

pub const DEFAULT_DIR: &str = "/run/bootstage";

/// `$CREDENTIALS_DIRECTORY/NAME`, if the unit passed that credential: how an app under
/// its own `User=` reads what the state dir (root's) holds.
pub fn credential(name: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("CREDENTIALS_DIRECTORY")?;
    let path = Path::new(&dir).join(name);
    path.exists().then_some(path)
}

#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
}

/// Held while a stage writes the state dir; released on drop (or when the process dies).
pub struct Lock(#[allow(dead_code)] File);

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> StateDir {
        StateDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The decoded parameters object.
    pub fn params_json(&self) -> PathBuf {
        self.root.join("params.json")
    }

    /// The instance's facts.
    pub fn instance_json(&self) -> PathBuf {
        self.root.join("instance.json")
    }

    /// Parameters and facts for `. params.env` and `EnvironmentFile=`.
    pub fn params_env(&self) -> PathBuf {
        self.root.join("params.env")
    }

    /// `params.env` less the variables that came from an import: the hooks' environment.
    pub fn hooks_env(&self) -> PathBuf {
        self.root.join("hooks.env")
    }

    /// Whether and since when the instance is in service this boot (the `in-service`
    /// stage): the app starts only once it exists.
    pub fn in_service_json(&self) -> PathBuf {
        self.root.join("in-service.json")
    }

    /// One file per resolved secret, for `LoadCredential=` (0700, files 0600). This and
    /// the three files above are links into the current set of values (`values.rs`).
    pub fn credentials_dir(&self) -> PathBuf {
        self.root.join("credentials")
    }

    /// Creates the directory (0700) if needed, takes its lock, waiting at most until the
    /// deadline, and removes temporary files a killed run left behind.
    pub async fn lock(&self, deadline: Deadline) -> Result<Lock> {
        self.lock_named(".lock", deadline).await
    }

    /// [`StateDir::lock`] with a lock of its own (`name` in the state dir), for a step
    /// that runs stages (which take the state dir's lock) and must run once.
    pub async fn lock_named(&self, name: &str, deadline: Deadline) -> Result<Lock> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .map_err(write_error(&self.root))?;
        let path = self.root.join(name);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(&path)
            .map_err(write_error(&path))?;
        let mut announced = false;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) if !deadline.remaining().is_zero() => {
                    if !announced {
                        tracing::info!(path = %path.display(), "another bootstage run holds the state dir; waiting");
                        announced = true;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(TryLockError::WouldBlock) => {
                    return Err(StateError::Write {
                        path,
                        source: std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "another bootstage run held the lock until the deadline",
                        ),
                    });
                }
                Err(TryLockError::Error(e)) => return Err(StateError::Write { path, source: e }),
            }
        }
        // Only the state dir's own lock guards its writers' temporary files.
        if name != ".lock" {
            return Ok(Lock(file));
        }
        let removed = atomic::remove_leftovers(&self.root).map_err(write_error(&self.root))?;
        if removed > 0 {
            tracing::info!(
                removed,
                "removed temporary files left by an interrupted run"
            );
        }
        Ok(Lock(file))
    }

    /// `params.env` read back with the file's own semantics, for the processes we start.
    pub fn load_env(&self) -> Result<Vec<(String, String)>> {
        self.load_env_file(self.params_env())
    }

    /// The hooks' variables (`hooks.env`).
    pub fn load_hooks_env(&self) -> Result<Vec<(String, String)>> {
        self.load_env_file(self.hooks_env())
    }

    fn load_env_file(&self, path: PathBuf) -> Result<Vec<(String, String)>> {
        let text = fs::read_to_string(&path).map_err(|source| StateError::Read {
            path: path.clone(),
            source,
        })?;
        Ok(crate::state::envfile::parse(
            &text,
            &path.display().to_string(),
        )?)
    }

    pub fn exists(&self, path: &Path) -> bool {
        fs::metadata(path).is_ok()
    }

    /// Whether this process may write the state dir, or create it in the nearest
    /// directory above it that exists: the permission a stage needs, asked before it
    /// starts (`access(2)`, so ACLs count).
    pub fn writable(&self) -> std::io::Result<()> {
        let mut dir = self.root.as_path();
        while !dir.exists() {
            match dir.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => dir = parent,
                _ => return Ok(()),
            }
        }
        use nix::unistd::{AccessFlags, access};
        access(dir, AccessFlags::W_OK | AccessFlags::X_OK).map_err(std::io::Error::from)
    }
}
