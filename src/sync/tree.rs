//! Atomic generations of a synced directory, as Kubernetes' atomic writer does them.
//!
//! The destination path (`/srv/app/config`) is a symlink to the current generation, which
//! lives with everything else bootstage keeps for it in one hidden sibling directory:
//!
//! ```text
//! /srv/app/config -> .config.bootstage/gen-17a2…      the symlink the app reads through
//! /srv/app/.config.bootstage/gen-17a2…/               the current tree
//! /srv/app/.config.bootstage/gen-17a2….manifest.json  key → ETag, size of that tree
//! /srv/app/.config.bootstage/staging-…/               a tree being built (a crash leftover otherwise)
//! /srv/app/.config.bootstage/.lock                    one sync per destination at a time
//! ```
//!
//! A new tree is built in a staging dir, fsynced, renamed to a generation, its manifest
//! written, and then a new symlink is renamed over the destination: one atomic rename, so a
//! reader (or a SIGKILL at any instant) sees the complete old tree or the complete new one.
//! The old generation is removed only after the swap; anything else in the hidden dir that
//! is not the current generation is a leftover of an interrupted run and is removed when
//! the next run takes the lock.
//!
//! A destination that already exists as something else: an empty directory (as an image
//! often ships it) is replaced; anything else (a non-empty directory, a file, a symlink
//! elsewhere) is refused, untouched, so bootstage never deletes data it did not write.

use std::collections::BTreeMap;
use std::fs::{self, DirBuilder, File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::state::atomic;

/// What a generation holds, for change detection on the next run.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    /// The source the tree came from; a different source starts from scratch.
    pub source: String,
    /// Relative path → the object it came from.
    pub files: BTreeMap<String, Entry>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    /// The object's [`crate::sync::source::Version::token`]: its ETag where the listing has one.
    pub etag: String,
    pub size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("{} exists and is not a bootstage-managed directory ({what}); move it away first, bootstage will not delete data it did not write", path.display())]
    Occupied { path: PathBuf, what: &'static str },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> TreeError + '_ {
    move |source| TreeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A sync destination and its hidden home, locked for this run.
pub struct Destination {
    path: PathBuf,
    home: PathBuf,
    _lock: File,
    current: Option<PathBuf>,
}

/// A tree being built.
pub struct Staging {
    pub dir: PathBuf,
}

impl Destination {
    /// Locks the destination (waiting at most `wait` for another run to finish), checks what
    /// is there, and removes leftovers of interrupted runs. Blocking: call it off the runtime.
    pub fn open(path: &Path, dir_mode: u32, wait: Duration) -> Result<Destination, TreeError> {
        let name = path.file_name().ok_or_else(|| TreeError::Occupied {
            path: path.into(),
            what: "no file name",
        })?;
        let parent = path.parent().unwrap_or(Path::new("/"));
        DirBuilder::new()
            .recursive(true)
            .mode(dir_mode)
            .create(parent)
            .map_err(io_at(parent))?;
        let home = parent.join(format!(".{}.bootstage", name.to_string_lossy()));
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&home)
            .map_err(io_at(&home))?;
        let lock_path = home.join(".lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_at(&lock_path))?;
        let until = Instant::now() + wait;
        let mut announced = false;
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) if Instant::now() < until => {
                    if !announced {
                        tracing::info!(dest = %path.display(), "another sync of this destination is running; waiting");
                        announced = true;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(TryLockError::WouldBlock) => {
                    let busy = io::Error::new(
                        io::ErrorKind::TimedOut,
                        "another sync held this destination until the deadline",
                    );
                    return Err(io_at(&lock_path)(busy));
                }
                Err(TryLockError::Error(e)) => return Err(io_at(&lock_path)(e)),
            }
        }
        let mut dest = Destination {
            path: path.into(),
            home,
            _lock: lock,
            current: None,
        };
        dest.current = dest.find_current()?;
        dest.remove_leftovers()?;
        Ok(dest)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current generation's directory, if the destination has one.
    pub fn current(&self) -> Option<&Path> {
        self.current.as_deref()
    }

    fn find_current(&self) -> Result<Option<PathBuf>, TreeError> {
        let occupied = |what| {
            Err(TreeError::Occupied {
                path: self.path.clone(),
                what,
            })
        };
        match fs::symlink_metadata(&self.path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_at(&self.path)(e)),
            Ok(meta) if meta.is_symlink() => {
                let target = fs::read_link(&self.path).map_err(io_at(&self.path))?;
                let ours = target.parent() == self.home.file_name().map(Path::new)
                    && target
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("gen-"));
                match ours {
                    true => Ok(Some(self.home.join(target.file_name().unwrap_or_default()))),
                    false => occupied("a symlink bootstage did not make"),
                }
            }
            Ok(meta) if meta.is_dir() => {
                match fs::read_dir(&self.path).map_err(io_at(&self.path))?.next() {
                    None => {
                        fs::remove_dir(&self.path).map_err(io_at(&self.path))?;
                        tracing::info!(dest = %self.path.display(), "replacing an empty directory with a managed one");
                        Ok(None)
                    }
                    Some(_) => occupied("a non-empty directory"),
                }
            }
            Ok(_) => occupied("a file"),
        }
    }

    fn remove_leftovers(&self) -> Result<(), TreeError> {
        let keep = self
            .current
            .as_ref()
            .and_then(|c| c.file_name())
            .map(|n| n.to_string_lossy().into_owned());
        for entry in fs::read_dir(&self.home).map_err(io_at(&self.home))? {
            let entry = entry.map_err(io_at(&self.home))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let current = keep
                .as_deref()
                .is_some_and(|k| name == k || name == format!("{k}.manifest.json"));
            if name == ".lock" || current {
                continue;
            }
            let path = entry.path();
            tracing::debug!(path = %path.display(), "removing a leftover of an interrupted sync");
            match entry.file_type().map_err(io_at(&path))?.is_dir() {
                true => fs::remove_dir_all(&path),
                false => fs::remove_file(&path),
            }
            .map_err(io_at(&path))?;
        }
        Ok(())
    }

    /// The current generation's manifest; empty when there is none or it is unreadable.
    pub fn manifest(&self) -> Manifest {
        self.current
            .as_ref()
            .and_then(|c| fs::read(manifest_path(c)).ok())
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    pub fn staging(&self, dir_mode: u32) -> Result<Staging, TreeError> {
        let dir = self.home.join(format!("staging-{}", unique()));
        DirBuilder::new()
            .mode(dir_mode)
            .create(&dir)
            .map_err(io_at(&dir))?;
        Ok(Staging { dir })
    }

    /// Swaps the staged tree in: fsync, rename to a generation, write its manifest, rename a
    /// new symlink over the destination, then remove the old generation.
    pub fn commit(&mut self, staging: Staging, manifest: &Manifest) -> Result<(), TreeError> {
        // One syncfs flushes every file and directory of the staged tree: far cheaper than
        // an fsync per file when a tree has thousands.
        let dir = File::open(&staging.dir).map_err(io_at(&staging.dir))?;
        nix::unistd::syncfs(&dir).map_err(|e| io_at(&staging.dir)(e.into()))?;
        let generation = self.home.join(format!("gen-{}", unique()));
        fs::rename(&staging.dir, &generation).map_err(io_at(&generation))?;
        let json = serde_json::to_vec_pretty(manifest).expect("manifests serialize");
        atomic::write_file(&manifest_path(&generation), &json)
            .map_err(|(path, source)| TreeError::Io { path, source })?;
        let link = self.home.join(format!("link-{}", unique()));
        let home_name = self.home.file_name().unwrap_or_default();
        let target = Path::new(home_name).join(generation.file_name().unwrap_or_default());
        std::os::unix::fs::symlink(&target, &link).map_err(io_at(&link))?;
        fs::rename(&link, &self.path).map_err(io_at(&self.path))?;
        let parent = self.path.parent().unwrap_or(Path::new("/"));
        File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(io_at(parent))?;
        if let Some(old) = self.current.replace(generation) {
            let _ = fs::remove_file(manifest_path(&old));
            fs::remove_dir_all(&old).map_err(io_at(&old))?;
        }
        Ok(())
    }
}

/// A staging dir that is dropped without being committed (an error, a timeout, SIGTERM)
/// is removed; after a commit it no longer exists under its staging name.
impl Drop for Staging {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn manifest_path(generation: &Path) -> PathBuf {
    let mut name = generation.file_name().unwrap_or_default().to_os_string();
    name.push(".manifest.json");
    generation.with_file_name(name)
}

fn unique() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{nanos:x}-{:x}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(dest: &mut Destination, files: &[(&str, &str)]) {
        let staging = dest.staging(0o755).unwrap();
        let mut manifest = Manifest {
            source: "test".into(),
            ..Manifest::default()
        };
        for (name, text) in files {
            let path = staging.dir.join(name);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, text).unwrap();
            manifest.files.insert(
                name.to_string(),
                Entry {
                    key: name.to_string(),
                    etag: text.to_string(),
                    size: 1,
                },
            );
        }
        dest.commit(staging, &manifest).unwrap();
    }

    #[test]
    fn generations_swap_and_old_ones_go() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("config");
        let mut dest = Destination::open(&path, 0o755, Duration::ZERO).unwrap();
        assert!(dest.current().is_none());
        build(&mut dest, &[("a", "1"), ("d/b", "2")]);
        assert_eq!(fs::read_to_string(path.join("d/b")).unwrap(), "2");
        build(&mut dest, &[("a", "3")]);
        assert_eq!(fs::read_to_string(path.join("a")).unwrap(), "3");
        assert!(!path.join("d").exists());
        drop(dest);
        let dest = Destination::open(&path, 0o755, Duration::ZERO).unwrap();
        assert_eq!(dest.manifest().files["a"].etag, "3");
        let home: Vec<_> = fs::read_dir(root.path().join(".config.bootstage"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            home.len(),
            3,
            "lock, one generation, its manifest: {home:?}"
        );
    }

    #[test]
    fn waiting_for_a_busy_destination_is_bounded() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("config");
        let held = Destination::open(&path, 0o755, Duration::ZERO).unwrap();
        let start = Instant::now();
        let err = Destination::open(&path, 0o755, Duration::from_millis(300))
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .contains("another sync held this destination until the deadline"),
            "{err}"
        );
        assert!((Duration::from_millis(300)..Duration::from_secs(2)).contains(&start.elapsed()));
        drop(held);
        assert!(Destination::open(&path, 0o755, Duration::ZERO).is_ok());
    }

    #[test]
    fn leftovers_are_removed_and_occupied_paths_refused() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("config");
        let mut dest = Destination::open(&path, 0o755, Duration::ZERO).unwrap();
        build(&mut dest, &[("a", "1")]);
        let staging = dest.staging(0o755).unwrap();
        fs::write(staging.dir.join("half"), "x").unwrap();
        drop(dest); // "killed" mid-build
        let dest = Destination::open(&path, 0o755, Duration::ZERO).unwrap();
        assert!(!staging.dir.exists());
        assert_eq!(fs::read_to_string(path.join("a")).unwrap(), "1");
        drop(dest);

        let plain = root.path().join("plain");
        fs::create_dir(&plain).unwrap();
        fs::write(plain.join("data"), "keep").unwrap();
        assert!(matches!(
            Destination::open(&plain, 0o755, Duration::ZERO),
            Err(TreeError::Occupied { .. })
        ));
        assert_eq!(fs::read_to_string(plain.join("data")).unwrap(), "keep");
        let empty = root.path().join("empty");
        fs::create_dir(&empty).unwrap();
        assert!(
            Destination::open(&empty, 0o755, Duration::ZERO)
                .unwrap()
                .current()
                .is_none()
        );
    }
}
