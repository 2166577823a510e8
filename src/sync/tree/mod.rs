//! Atomic generations of a synced directory, as Kubernetes' atomic writer does them, made
//! safe for root in a directory an app user can write.
//!
//! The destination path (`/srv/app/config`) is a symlink to the current generation, which
//! lives with everything else bootstage keeps for it in one hidden sibling, the *home*:
//!
//! ```text
//! /srv/app/config -> .config.bootstage/gen-17a2…      the symlink the app reads through
//! /srv/app/.config.bootstage/                         the home: owned by root, 0755
//! /srv/app/.config.bootstage/gen-17a2…/               the current tree
//! /srv/app/.config.bootstage/gen-17a2….manifest.json  key → ETag, size (an archive's tree: path → size)
//! /srv/app/.config.bootstage/gen-17a2….seal.json      inode, ctime, size of each file and symlink
//! /srv/app/.config.bootstage/staging-…/               a tree being built (a crash leftover otherwise)
//! /srv/app/.config.bootstage/.lock                    one sync per destination at a time
//! /srv/app/.config.bootstage/generations.json         the kept generations, a rollback's pin
//! ```
//!
//! **Generations kept.** The current generation and up to `keep - 1` older ones stay
//! (`keep`, 2 by default), each with its source, version (an archive's ETag, or a digest
//! of a prefix's listing), time and marks (`failed`: its `verify` failed; `rolled back`:
//! someone rolled back from it; `unverified`), in `generations.json`, with what is still
//! owed for the current tree (the `--on-change` hook, written in the swap's or the
//! rollback's record write when the run has one; a `release_failed` notice, with the
//! `failed` mark), cleared once paid. The symlink says which one is
//! current; the record only annotates. Pruning removes failed ones first, then the
//! oldest. A rollback swaps the link to a kept generation: one rename, as a swap is; its
//! record (the pin, the marks) is written before the rename, so a SIGKILL leaves one
//! complete generation current whatever the instant. The decisions (which generation a
//! rollback chooses, whether a version may be swapped in, what is pruned) are pure
//! functions ([`rollback_target`], [`blocked`], [`prune`]) with table tests.
//!
//! **Hostile parents.** The destination's parent may belong to the app (`/srv/app`), so
//! the app can rename, replace or plant anything there, including a symlink named like the
//! home. So the parent is opened once, and every step after that (the lock, staging,
//! generations, manifests, the link, the rename over the destination, leftover removal) is
//! relative to the parent's and the home's descriptors, never through a path, and never
//! through a symlink (`fsat.rs`). Inside a generation or a staging tree, each directory
//! is opened once per pass (`fsat::Dirs`), so a step on a file opens none again. The home
//! must be a real directory owned by the user running bootstage with no group or other
//! write (as sshd's StrictModes and systemd-tmpfiles require of what root trusts);
//! anything else is refused, untouched. A
//! home that exists without our `.lock` was not made by bootstage and is refused too; in
//! ours, only names bootstage makes (`staging-…`, `gen-…`, `link-…`, temporary files) are
//! ever removed. The parent is reached from `/` one component at a time (`fsat::open_dir_path`):
//! a symlink on the way is followed only if root owns it and every directory above it,
//! else refused (65) before anything is written; missing parent directories are created
//! owned by root, 0755.
//!
//! **Owners.** A tree is built root-only (0700) and handed to `owner`/`group` bottom-up
//! only when complete (`Staging::finish`), each mode and owner set on an open descriptor:
//! while a directory is handed over, every directory above it is still root's, so no
//! entry under it can be swapped. Unchanged files are carried forward with `linkat` from
//! the current generation, and only if the new name is a regular file with the inode that
//! was checked (a symlink or another file planted by the app is not).
//!
//! **Untouched files.** The seal records each file's inode, ctime and size after the
//! generation is complete and the previous one removed (the last link-count change).
//! An app that owns the tree can edit a file and restore its mtime, but not its ctime: a
//! file whose inode, ctime or size differs from the seal is fetched again. No seal (a crash
//! before it was written): nothing is carried forward.
//!
//! **Atomic.** A new tree is built in a staging dir, fsynced (`syncfs`), renamed to a
//! generation, its manifest written, and then a new symlink is renamed over the
//! destination: one atomic rename, so a reader (or a SIGKILL at any instant) sees the
//! complete old tree or the complete new one. Removing the old generation afterwards may
//! fail (a warning: the new tree is in place).
//!
//! A destination that already exists as something else: an empty directory (as an image
//! often ships it) is replaced; anything else (a non-empty directory, a file, a symlink
//! elsewhere) is refused, untouched, so bootstage never deletes data it did not write.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fs::{File, TryLockError};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::sys::stat::{FileStat, Mode};
use serde::{Deserialize, Serialize};

use crate::base::exit::{ExitCode, ExitStatus};
use crate::sync::fsat::{self, io};

mod generations;
mod staging;

pub use generations::{
    Blocked, DEFAULT_KEEP, Made, Pin, Record, State, Version, blocked, blocked_version,
    listing_version, prune, rollback_target, who,
};
use generations::{FAILED_KEPT, RECORD, now};
pub use staging::{Room, Staging};

/// The name of a destination's home, its hidden sibling: `.NAME.bootstage` for `NAME`.
pub(crate) fn home_name(name: &OsStr) -> OsString {
    let mut home = OsString::from(".");
    home.push(name);
    home.push(".bootstage");
    home
}

/// The home's record of its kept generations (each one's name and version), which a
/// reader outside a sync (the status tags) may read without the lock.
pub(crate) const GENERATIONS: &str = RECORD;

/// What a generation holds, for change detection on the next run.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    /// The source the tree came from; a different source starts from scratch.
    pub source: String,
    /// Relative path → the object it came from.
    pub files: BTreeMap<String, Entry>,
    /// For a tree unpacked from one archive: which version of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<Archived>,
    /// For a tree unpacked from one archive: its symlinks and directories, which must be
    /// as they were made for the tree to be intact (a prefix's tree has neither of its own).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub links: BTreeSet<String>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub dirs: BTreeSet<String>,
}

/// The archive a generation was unpacked from: what the next run asks S3 about.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Archived {
    /// Its [`crate::sync::source::Version::token`] (the ETag, for S3).
    pub etag: String,
    pub size: u64,
    /// Its SHA-256, when the entry pinned one and the archive matched it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The owner, group and modes it was handed over with: other settings unpack it again.
    #[serde(default)]
    pub settings: String,
}

/// One file of a manifest. A tree unpacked from an archive leaves `key` and `etag` empty
/// (its files are the archive's, whose version [`Archived`] holds) and they are not
/// written: each name once in the file, as `archive.rs` charges it against the room.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
    /// The object's [`crate::sync::source::Version::token`]: its ETag where the listing has one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub etag: String,
    pub size: u64,
}

/// What each file of a complete generation was, on disk, once nothing of ours could
/// change it any more: inode, ctime (seconds, nanoseconds), size.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Seal {
    files: BTreeMap<String, (u64, i64, i64, u64)>,
}

impl Manifest {
    /// Which version of its source this tree is.
    pub fn version(&self) -> String {
        match &self.archive {
            Some(a) => a.etag.clone(),
            None => listing_version(
                self.files
                    .iter()
                    .map(|(rel, e)| (rel.as_str(), e.etag.as_str(), e.size)),
            ),
        }
    }
}

fn seal_of(st: &FileStat) -> (u64, i64, i64, u64) {
    (st.st_ino, st.st_ctime, st.st_ctime_nsec, st.st_size as u64)
}

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("{} exists and is not a bootstage-managed directory ({what}); move it away first, bootstage will not delete data it did not write", path.display())]
    Occupied { path: PathBuf, what: &'static str },
    #[error("{} is not a home bootstage can trust ({why}); bootstage will not write or delete anything in it: remove it, and make sure only root can write it", path.display())]
    Untrusted { path: PathBuf, why: String },
    #[error("{} is {why}: bootstage does not follow it to a destination, since whoever can change it could point root's writes anywhere; name the real directory in \"to\", or make the link and every directory above it root's", path.display())]
    Symlink { path: PathBuf, why: String },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    /// A rollback that has nothing to swap in.
    #[error("{}: {why}", path.display())]
    NoGeneration { path: PathBuf, why: String },
}

impl ExitStatus for TreeError {
    fn exit_code(&self) -> ExitCode {
        match self {
            TreeError::Symlink { .. } => ExitCode::BadUserData,
            TreeError::NoGeneration { .. } => ExitCode::NoInput,
            TreeError::Occupied { .. } | TreeError::Untrusted { .. } | TreeError::Io { .. } => {
                ExitCode::CantCreate
            }
        }
    }
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> TreeError + '_ {
    move |source| TreeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A sync destination and its home, locked for this run.
pub struct Destination {
    path: PathBuf,
    name: OsString,
    parent: OwnedFd,
    home_path: PathBuf,
    home_name: OsString,
    home: OwnedFd,
    _lock: File,
    current: Option<Generation>,
    /// `generations.json`, as read at `open` and kept up to date.
    record: Record,
    keep: usize,
    /// A new generation must pass a `verify`: it is recorded `unverified` until then.
    verify: bool,
    /// This run announces a swap or a rollback with `--on-change`: each records the hook
    /// owed until [`Destination::hook_paid`].
    hook: bool,
}

/// The current generation: its name, its descriptor, and its seal.
struct Generation {
    name: OsString,
    /// Its directories, each opened once for this pass.
    dirs: fsat::Dirs,
    seal: Option<Seal>,
}

/// Names bootstage makes in a home; only these are ever removed from one.
fn ours(name: &[u8]) -> bool {
    [
        &b"staging-"[..],
        b"gen-",
        b"link-",
        crate::state::atomic::TEMP_PREFIX.as_bytes(),
    ]
    .iter()
    .any(|prefix| name.starts_with(prefix))
}

impl Destination {
    /// Locks the destination (waiting at most `wait` for another run to finish), checks what
    /// is there, and removes leftovers of interrupted runs. Blocking: call it off the runtime.
    pub fn open(path: &Path, wait: Duration) -> Result<Destination, TreeError> {
        // `--to a/config` by hand names ./a/config; made absolute, no parent is "", which
        // no call can open or create.
        let path = &std::path::absolute(path).map_err(io_at(path))?;
        let name = path
            .file_name()
            .ok_or_else(|| TreeError::Occupied {
                path: path.into(),
                what: "no file name",
            })?
            .to_os_string();
        let parent_path = path.parent().unwrap_or(Path::new("/"));
        let parent = fsat::open_dir_path(parent_path, true).map_err(|e| match e {
            fsat::WalkError::Symlink { at, why } => TreeError::Symlink { path: at, why },
            fsat::WalkError::Io { at, source } => TreeError::Io { path: at, source },
        })?;
        let home_name = home_name(&name);
        let home_path = parent_path.join(&home_name);
        let (home, fresh) = match fsat::open_dir(&parent, &home_name) {
            Ok(home) => (home, false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let home = fsat::mkdir(&parent, &home_name, 0o755).map_err(io_at(&home_path))?;
                (home, true)
            }
            Err(e) => {
                let why = match fsat::stat_at(&parent, &home_name) {
                    Ok(st) if fsat::is_symlink(&st) => "it is a symlink".to_string(),
                    Ok(_) => "it is not a directory".to_string(),
                    Err(_) => e.to_string(),
                };
                return Err(TreeError::Untrusted {
                    path: home_path,
                    why,
                });
            }
        };
        trust(&home, &home_path)?;
        let lock_name = OsStr::new(".lock");
        if !fresh
            && fsat::stat_at(&home, lock_name).is_err()
            && !fsat::names(&home).map_err(io_at(&home_path))?.is_empty()
        {
            return Err(TreeError::Untrusted {
                path: home_path,
                why: "it has no .lock of bootstage's, so bootstage did not make it".into(),
            });
        }
        let lock_path = home_path.join(".lock");
        let flags = OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let lock: File =
            nix::fcntl::openat(&home, lock_name, flags, Mode::from_bits_truncate(0o600))
                .map_err(|e| io_at(&lock_path)(io(e)))?
                .into();
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
            name,
            parent,
            home_path,
            home_name,
            home,
            _lock: lock,
            current: None,
            record: Record::default(),
            keep: DEFAULT_KEEP,
            verify: false,
            hook: false,
        };
        dest.current = dest.find_current()?;
        dest.record = dest.read_json(OsStr::new(RECORD)).unwrap_or_default();
        dest.reconcile();
        dest.remove_leftovers()?;
        Ok(dest)
    }

    /// How many generations to keep, the current one included (at least 1).
    pub fn set_keep(&mut self, keep: usize) {
        self.keep = keep.max(1);
    }

    /// Whether a new generation must pass a `verify`: if so, it is recorded `unverified`
    /// in the same write that records it, until [`Destination::mark_verified`].
    pub fn set_verify(&mut self, verify: bool) {
        self.verify = verify;
    }

    /// Whether this run announces its swaps and rollbacks with `--on-change`: if so,
    /// each records the hook owed, in the same write, until [`Destination::hook_paid`].
    pub fn set_hook(&mut self, hook: bool) {
        self.hook = hook;
    }

    /// Whether the `--on-change` hook is owed for the current tree (this run's swap or
    /// rollback, or one of a run that ended before its hook returned).
    pub fn owes_hook(&self) -> bool {
        self.record.hook_owed.is_some()
    }

    /// The hook ran (and returned) for the current tree: the mark goes.
    pub fn hook_paid(&mut self) {
        if self.record.hook_owed.take().is_some() {
            self.write_record();
        }
    }

    /// The generation whose `release_failed` notice is owed, if any.
    pub fn notice_owed(&self) -> Option<&Made> {
        let name = self.record.notice_owed.as_deref()?;
        self.record.generations.iter().find(|m| m.name == name)
    }

    /// The `release_failed` notice was delivered (or failed to be): the mark goes.
    pub fn notice_sent(&mut self) {
        if self.record.notice_owed.take().is_some() {
            self.write_record();
        }
    }

    /// The record of the kept generations.
    pub fn record(&self) -> &Record {
        &self.record
    }

    /// The current generation's name.
    pub fn current_name(&self) -> Option<&str> {
        self.current.as_ref().and_then(|g| g.name.to_str())
    }

    /// The current generation's record, if it has one.
    pub fn current_made(&self) -> Option<&Made> {
        let name = self.current_name()?;
        self.record.generations.iter().find(|m| m.name == name)
    }

    /// The kept generations, oldest first, each with what it is now.
    pub fn list(&self) -> Vec<(Made, State)> {
        let current = self.current_name();
        self.record
            .generations
            .iter()
            .map(|m| (m.clone(), State::of(m, current)))
            .collect()
    }

    /// The record made true to what is on disk: generations that are gone are dropped,
    /// and a current one it lacks (a SIGKILL between the swap and the record's write)
    /// is added from its manifest. Written only if it changed.
    fn reconcile(&mut self) {
        let before = self.record.clone();
        let current = self.current_name().map(str::to_string);
        self.record.generations.retain(|m| {
            current.as_deref() == Some(m.name.as_str())
                || fsat::open_dir(&self.home, OsStr::new(&m.name)).is_ok()
        });
        if let Some(name) = current
            && !self.record.generations.iter().any(|m| m.name == name)
        {
            let manifest = self.manifest();
            self.record.generations.push(Made {
                name,
                version: manifest.version(),
                sha256: manifest.archive.as_ref().and_then(|a| a.sha256.clone()),
                source: manifest.source,
                time: now(),
                failed: None,
                rolled_back: None,
                // A run ended between the swap and the record: no verify judged it (a
                // destination without one drops the mark at its next pass).
                unverified: Some(now()),
            });
        }
        if self.record != before {
            self.write_record();
        }
    }

    /// Writes `generations.json` (atomically); a failure costs the annotations, not the
    /// tree: it is logged.
    fn write_record(&self) {
        let written = fsat::write_atomic_with(&self.home, RECORD, |file| {
            Ok(serde_json::to_writer_pretty(file, &self.record)?)
        });
        if let Err(e) = written {
            tracing::warn!(path = %self.home_path.join(RECORD).display(), error = %e, "cannot write the generations' record");
        }
    }

    /// Writes `generations.json`, or fails: for a rollback, whose pin must hold.
    fn write_record_or_fail(&self) -> Result<(), TreeError> {
        fsat::write_atomic_with(&self.home, RECORD, |file| {
            Ok(serde_json::to_writer_pretty(file, &self.record)?)
        })
        .map_err(io_at(&self.home_path.join(RECORD)))
    }

    /// Drops the pin of a rollback (`rollback --clear`): the next pass may swap in what
    /// the source holds. Whether there was one.
    pub fn clear_pin(&mut self) -> Result<bool, TreeError> {
        let had = self.record.pin.take().is_some();
        if had {
            self.write_record_or_fail()?;
        }
        Ok(had)
    }

    /// Swaps a kept generation in (see [`rollback_target`] for which): the record first
    /// (with `pin`, the current version is held away until the source changes; with
    /// `failed`, the current one is marked failed), then one rename of the link. Returns
    /// the generation now current.
    pub fn roll_back(
        &mut self,
        to: Option<&str>,
        by: &str,
        pin: bool,
        failed: Option<&str>,
    ) -> Result<Made, TreeError> {
        let current = self.current_name().map(str::to_string);
        let target = rollback_target(&self.record, current.as_deref(), to)
            .map_err(|why| TreeError::NoGeneration {
                path: self.path.clone(),
                why,
            })?
            .clone();
        let at = now();
        if let Some(made) = self
            .record
            .generations
            .iter_mut()
            .find(|m| Some(&m.name) == current.as_ref())
        {
            let from = Version {
                source: made.source.clone(),
                version: made.version.clone(),
            };
            match failed {
                Some(why) => {
                    made.failed = Some(format!("{at}: {why}"));
                    made.unverified = None;
                    self.record.notice_owed = Some(made.name.clone());
                    self.record.failed.retain(|v| *v != from);
                    self.record.failed.push(from);
                    let excess = self.record.failed.len().saturating_sub(FAILED_KEPT);
                    self.record.failed.drain(..excess);
                }
                None => made.rolled_back = Some(format!("by {by} at {at}")),
            }
            if pin {
                self.record.pin = Some(Pin {
                    from: Version {
                        source: made.source.clone(),
                        version: made.version.clone(),
                    },
                    to: target.name.clone(),
                    by: by.to_string(),
                    at: at.clone(),
                });
            }
        }
        if self.hook {
            self.record.hook_owed = Some(at.clone());
        }
        self.write_record_or_fail()?;
        let name = OsString::from(&target.name);
        let dir = fsat::open_dir(&self.home, &name).map_err(io_at(&self.home_path.join(&name)))?;
        let dirs = fsat::Dirs::new(&dir).map_err(io_at(&self.path))?;
        self.point_at(&name)?;
        self.current = Some(Generation {
            seal: self.read_json(&suffixed(&name, ".seal.json")),
            name,
            dirs,
        });
        Ok(target)
    }

    /// Marks the current generation failed (its verify failed and nothing older can be
    /// swapped in): it stays, and the next pass does not pass it as good.
    pub fn mark_failed(&mut self, why: &str) {
        let at = now();
        let name = self.current_name().map(str::to_string);
        if let Some(made) = self
            .record
            .generations
            .iter_mut()
            .find(|m| Some(&m.name) == name.as_ref())
        {
            made.failed = Some(format!("{at}: {why}"));
            made.unverified = None;
            self.record.notice_owed = Some(made.name.clone());
            let from = Version {
                source: made.source.clone(),
                version: made.version.clone(),
            };
            self.record.failed.retain(|v| *v != from);
            self.record.failed.push(from);
            self.write_record();
        }
    }

    /// The current generation passed its verify (or its destination has none): its
    /// `unverified` mark goes. Writes the record only if it had one.
    pub fn mark_verified(&mut self) {
        let name = self.current_name().map(str::to_string);
        let marked = self
            .record
            .generations
            .iter_mut()
            .find(|m| Some(&m.name) == name.as_ref())
            .and_then(|m| m.unverified.take());
        if marked.is_some() {
            self.write_record();
        }
    }

    /// One atomic step: a new symlink to `generation`, renamed over the destination, and
    /// the parent fsynced.
    fn point_at(&self, generation: &OsStr) -> Result<(), TreeError> {
        let link = OsString::from(format!("link-{}", fsat::unique()));
        let target = Path::new(&self.home_name).join(generation);
        nix::unistd::symlinkat(&target, &self.home, link.as_os_str())
            .map_err(|e| io_at(&self.home_path.join(&link))(io(e)))?;
        nix::fcntl::renameat(
            &self.home,
            link.as_os_str(),
            &self.parent,
            self.name.as_os_str(),
        )
        .map_err(|e| io_at(&self.path)(io(e)))?;
        nix::unistd::fsync(&self.parent).map_err(|e| io_at(&self.path)(io(e)))
    }

    /// Whether the destination has a generation of ours.
    pub fn has_current(&self) -> bool {
        self.current.is_some()
    }

    fn find_current(&self) -> Result<Option<Generation>, TreeError> {
        let occupied = |what| {
            Err(TreeError::Occupied {
                path: self.path.clone(),
                what,
            })
        };
        let st = match fsat::stat_at(&self.parent, &self.name) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_at(&self.path)(e)),
            Ok(st) => st,
        };
        if fsat::is_symlink(&st) {
            let target = nix::fcntl::readlinkat(&self.parent, self.name.as_os_str())
                .map_err(|e| io_at(&self.path)(io(e)))?;
            let target = Path::new(&target);
            let generation = target
                .file_name()
                .filter(|n| n.as_bytes().starts_with(b"gen-"))
                .filter(|_| target.parent() == Some(Path::new(&self.home_name)));
            let Some(generation) = generation else {
                return occupied("a symlink bootstage did not make");
            };
            return match fsat::open_dir(&self.home, generation) {
                Ok(dir) => Ok(Some(Generation {
                    name: generation.to_os_string(),
                    dirs: fsat::Dirs::new(&dir).map_err(io_at(&self.path))?,
                    seal: self.read_json(&suffixed(generation, ".seal.json")),
                })),
                // Our link to a generation that is gone: start afresh.
                Err(_) => Ok(None),
            };
        }
        if fsat::is_dir(&st) {
            return match nix::unistd::unlinkat(
                &self.parent,
                self.name.as_os_str(),
                nix::unistd::UnlinkatFlags::RemoveDir,
            ) {
                Ok(()) => {
                    tracing::info!(dest = %self.path.display(), "replacing an empty directory with a managed one");
                    Ok(None)
                }
                Err(nix::errno::Errno::ENOTEMPTY | nix::errno::Errno::EEXIST) => {
                    occupied("a non-empty directory")
                }
                Err(e) => Err(io_at(&self.path)(io(e))),
            };
        }
        occupied("a file")
    }

    fn remove_leftovers(&self) -> Result<(), TreeError> {
        let kept = self.current.iter().map(|g| g.name.clone()).chain(
            self.record
                .generations
                .iter()
                .map(|m| OsString::from(&m.name)),
        );
        let keep: Vec<OsString> = kept
            .flat_map(|name| {
                [
                    suffixed(&name, ".manifest.json"),
                    suffixed(&name, ".seal.json"),
                    name,
                ]
            })
            .collect();
        for name in fsat::names(&self.home).map_err(io_at(&self.home_path))? {
            if name == ".lock" || name == RECORD || keep.contains(&name) {
                continue;
            }
            let path = self.home_path.join(&name);
            if !ours(name.as_bytes()) {
                tracing::warn!(path = %path.display(), "leaving alone something bootstage did not make");
                continue;
            }
            tracing::debug!(path = %path.display(), "removing a leftover of an interrupted sync");
            // A leftover that cannot go costs disk space, not the sync.
            if let Err(e) = fsat::remove_tree(&self.home, &name) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove a leftover of an interrupted sync");
            }
        }
        Ok(())
    }

    /// Reads a manifest or a seal as it streams from the file, never whole in memory.
    fn read_json<T: serde::de::DeserializeOwned>(&self, name: &OsStr) -> Option<T> {
        let (file, _) = fsat::open_file(&self.home, name).ok()?;
        serde_json::from_reader(io::BufReader::with_capacity(64 * 1024, file)).ok()
    }

    /// The current generation's manifest; empty when there is none or it is unreadable.
    pub fn manifest(&self) -> Manifest {
        self.current
            .as_ref()
            .and_then(|g| self.read_json(&suffixed(&g.name, ".manifest.json")))
            .unwrap_or_default()
    }

    /// How the current generation's `rel` is now, if it is of the `kind` (a regular file,
    /// a symlink) and exactly as sealed (same inode, ctime and size): one bootstage made
    /// and nobody changed since.
    fn untouched(&self, rel: &Path, kind: fn(&FileStat) -> bool) -> Option<FileStat> {
        let generation = self.current.as_ref()?;
        let sealed = generation
            .seal
            .as_ref()?
            .files
            .get(&*rel.to_string_lossy())?;
        let (dir, name) = generation.dirs.parent(rel).ok()?;
        let st = fsat::stat_at(&*dir, name).ok()?;
        (kind(&st) && seal_of(&st) == *sealed).then_some(st)
    }

    /// Whether `rel` can be carried forward: untouched since sealed, and `size` bytes.
    pub fn unchanged(&self, rel: &Path, size: u64) -> bool {
        self.untouched(rel, fsat::is_file)
            .is_some_and(|st| st.st_size as u64 == size)
    }

    /// Whether every file and symlink of `manifest` is in the current generation as
    /// sealed, and every directory it names is still a directory there.
    pub fn intact(&self, manifest: &Manifest) -> bool {
        let Some(generation) = self.current.as_ref() else {
            return false;
        };
        manifest
            .files
            .iter()
            .all(|(rel, entry)| self.unchanged(Path::new(rel), entry.size))
            && manifest
                .links
                .iter()
                .all(|rel| self.untouched(Path::new(rel), fsat::is_symlink).is_some())
            && manifest
                .dirs
                .iter()
                .all(|rel| generation.dirs.dir(Path::new(rel)).is_ok())
    }

    pub fn staging(&self) -> Result<Staging, TreeError> {
        let name = OsString::from(format!("staging-{}", fsat::unique()));
        let path = self.home_path.join(&name);
        let dir = fsat::mkdir(&self.home, &name, 0o700).map_err(io_at(&path))?;
        let home = self.home.try_clone().map_err(io_at(&self.home_path))?;
        let dirs = fsat::Dirs::new(&dir).map_err(io_at(&path))?;
        Ok(Staging {
            home,
            name,
            dir,
            dirs,
            path,
        })
    }

    /// Swaps the staged tree in: fsync, rename to a generation, write its manifest, rename a
    /// new symlink over the destination, remove the old generation, write the new seal.
    pub fn commit(&mut self, staging: Staging, manifest: &Manifest) -> Result<(), TreeError> {
        // One syncfs flushes every file and directory of the staged tree: far cheaper than
        // an fsync per file when a tree has thousands.
        nix::unistd::syncfs(&staging.dir).map_err(|e| io_at(&staging.path)(io(e)))?;
        let generation = OsString::from(format!("gen-{}", fsat::unique()));
        let gen_path = self.home_path.join(&generation);
        nix::fcntl::renameat(
            &self.home,
            staging.name.as_os_str(),
            &self.home,
            generation.as_os_str(),
        )
        .map_err(|e| io_at(&gen_path)(io(e)))?;
        let staged_dir = staging.take();
        let manifest_name = suffixed(&generation, ".manifest.json");
        fsat::write_atomic_with(&self.home, &manifest_name.to_string_lossy(), |file| {
            Ok(serde_json::to_writer_pretty(file, manifest)?)
        })
        .map_err(io_at(&self.home_path.join(&manifest_name)))?;
        self.point_at(&generation)?;
        let new = Generation {
            name: generation.clone(),
            dirs: fsat::Dirs::new(&staged_dir).map_err(io_at(&self.path))?,
            seal: None,
        };
        self.current = Some(new);
        // The new tree is in place: it is recorded (a move forward ends a rollback's
        // pin), and the generations past `keep` go. A failure here costs disk space or
        // the annotations, not the boot.
        self.record.generations.push(Made {
            name: generation.to_string_lossy().into_owned(),
            source: manifest.source.clone(),
            version: manifest.version(),
            sha256: manifest.archive.as_ref().and_then(|a| a.sha256.clone()),
            time: now(),
            failed: None,
            rolled_back: None,
            unverified: self.verify.then(now),
        });
        if self.hook {
            self.record.hook_owed = Some(now());
        }
        self.record.pin = None;
        let current = self.current_name().map(str::to_string);
        let pruned = prune(&self.record, current.as_deref(), self.keep);
        for old in &pruned {
            let old = OsString::from(old);
            for name in [
                suffixed(&old, ".manifest.json"),
                suffixed(&old, ".seal.json"),
                old.clone(),
            ] {
                if let Err(e) = fsat::remove_tree(&self.home, &name) {
                    tracing::warn!(path = %self.home_path.join(&name).display(), error = %e, "cannot remove an old generation; the next run will");
                }
            }
        }
        self.record
            .generations
            .retain(|m| !pruned.contains(&m.name));
        self.write_record();
        // After the last link-count change of this generation's files: seal them.
        let mut seal = Seal::default();
        let current = self.current.as_ref().expect("just set");
        for rel in manifest.files.keys().chain(&manifest.links) {
            let st = current
                .dirs
                .parent(Path::new(rel))
                .and_then(|(dir, name)| fsat::stat_at(&*dir, name));
            if let Ok(st) = st {
                seal.files.insert(rel.clone(), seal_of(&st));
            }
        }
        let seal_name = suffixed(&generation, ".seal.json");
        let written = fsat::write_atomic_with(&self.home, &seal_name.to_string_lossy(), |file| {
            Ok(serde_json::to_writer(file, &seal)?)
        });
        if let Err(e) = written {
            tracing::warn!(error = %e, "cannot write the generation's seal; the next sync fetches every file again");
        }
        self.current.as_mut().expect("just set").seal = Some(seal);
        Ok(())
    }
}

/// `name` + `suffix`.
fn suffixed(name: &OsStr, suffix: &str) -> OsString {
    let mut out = name.to_os_string();
    out.push(suffix);
    out
}

/// The home must be a directory of the user running bootstage, writable by nobody else.
fn trust(home: &OwnedFd, path: &Path) -> Result<(), TreeError> {
    let st = nix::sys::stat::fstat(home).map_err(|e| io_at(path)(io(e)))?;
    let me = nix::unistd::geteuid().as_raw();
    let why = if st.st_uid != me {
        Some(format!("owned by uid {}, not {me}", st.st_uid))
    } else if st.st_mode & 0o022 != 0 {
        Some(format!(
            "mode {:o} lets others write it",
            st.st_mode & 0o7777
        ))
    } else {
        None
    };
    match why {
        Some(why) => Err(TreeError::Untrusted {
            path: path.to_path_buf(),
            why,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn build(dest: &mut Destination, files: &[(&str, &str)]) {
        let staging = dest.staging().unwrap();
        let mut manifest = Manifest {
            source: "test".into(),
            ..Manifest::default()
        };
        let mut dirs = BTreeSet::new();
        for (name, _) in files {
            let mut p = Path::new(name).parent();
            while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
                dirs.insert(d.to_path_buf());
                p = d.parent();
            }
        }
        staging.mkdirs(&dirs).unwrap();
        let old = dest.manifest();
        for (name, text) in files {
            let same = old.files.get(*name).is_some_and(|e| e.etag == *text);
            if !(same && staging.carry(dest, Path::new(name))) {
                staging
                    .create(Path::new(name))
                    .unwrap()
                    .write_all(text.as_bytes())
                    .unwrap();
            }
            manifest.files.insert(
                name.to_string(),
                Entry {
                    key: name.to_string(),
                    etag: text.to_string(),
                    size: text.len() as u64,
                },
            );
        }
        let names: Vec<PathBuf> = files.iter().map(|(n, _)| PathBuf::from(n)).collect();
        staging
            .finish(
                names.iter().map(|n| (n.as_path(), 0o644)),
                &[],
                &dirs,
                (None, None),
                0o755,
            )
            .unwrap();
        dest.commit(staging, &manifest).unwrap();
    }

    fn home_names(root: &Path) -> BTreeSet<String> {
        std::fs::read_dir(root.join(".config.bootstage"))
            .unwrap()
            .map(|e| {
                let name = e.unwrap().file_name().into_string().unwrap();
                name.split('-').next().unwrap().to_string()
                    + if name.ends_with(".manifest.json") {
                        ".manifest"
                    } else if name.ends_with(".seal.json") {
                        ".seal"
                    } else {
                        ""
                    }
            })
            .collect()
    }

    #[test]
    fn generations_swap_and_old_ones_go() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("config");
        let mut dest = Destination::open(&path, Duration::ZERO).unwrap();
        dest.set_keep(1);
        assert!(!dest.has_current());
        build(&mut dest, &[("a", "1"), ("d/b", "2")]);
        assert_eq!(std::fs::read_to_string(path.join("d/b")).unwrap(), "2");
        build(&mut dest, &[("a", "3")]);
        assert_eq!(std::fs::read_to_string(path.join("a")).unwrap(), "3");
        assert!(!path.join("d").exists());
        drop(dest);
        let dest = Destination::open(&path, Duration::ZERO).unwrap();
        assert_eq!(dest.manifest().files["a"].etag, "3");
        assert!(dest.unchanged(Path::new("a"), 1));
        assert_eq!(
            home_names(root.path()),
            BTreeSet::from([
                ".lock".into(),
                "gen".into(),
                "gen.manifest".into(),
                "gen.seal".into(),
                "generations.json".into(),
            ])
        );
        assert_eq!(dest.list().len(), 1);
    }

    /// A rollback on disk: the previous tree current again with one rename, the pin and
    /// the mark recorded and read back after a reopen; `keep: 3` keeps three; a new
    /// generation ends the pin; --clear ends it too.
    #[test]
    fn rollback_swaps_back_and_pins() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("config");
        let mut dest = Destination::open(&path, Duration::ZERO).unwrap();
        dest.set_keep(3);
        for v in ["1", "2", "3", "4"] {
            build(&mut dest, &[("a", v)]);
        }
        let names: Vec<String> = dest.list().into_iter().map(|(m, _)| m.name).collect();
        assert_eq!(names.len(), 3);
        let gens = std::fs::read_dir(root.path().join(".config.bootstage"))
            .unwrap()
            .filter(|e| {
                let n = e.as_ref().unwrap().file_name().into_string().unwrap();
                n.starts_with("gen-") && !n.ends_with(".json")
            })
            .count();
        assert_eq!(gens, 3);
        let back = dest.roll_back(None, "ops (uid 0)", true, None).unwrap();
        assert_eq!(back.name, names[1]);
        assert_eq!(std::fs::read_to_string(path.join("a")).unwrap(), "3");
        drop(dest);
        let mut dest = Destination::open(&path, Duration::ZERO).unwrap();
        let states: Vec<State> = dest.list().into_iter().map(|(_, s)| s).collect();
        assert_eq!(states, [State::Previous, State::Current, State::RolledBack]);
        let pin = dest.record().pin.clone().unwrap();
        assert_eq!(
            (pin.to.as_str(), pin.by.as_str()),
            (names[1].as_str(), "ops (uid 0)")
        );
        assert_eq!(pin.from.version, dest.list()[2].0.version);
        assert!(dest.clear_pin().unwrap());
        assert!(!dest.clear_pin().unwrap());
        dest.roll_back(None, "ops", true, None).unwrap();
        assert_eq!(std::fs::read_to_string(path.join("a")).unwrap(), "2");
        build(&mut dest, &[("a", "5")]);
        assert_eq!(dest.record().pin, None, "a move forward ends the pin");
        assert_eq!(std::fs::read_to_string(path.join("a")).unwrap(), "5");
    }

    #[test]
    fn waiting_for_a_busy_destination_is_bounded() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("config");
        let held = Destination::open(&path, Duration::ZERO).unwrap();
        let start = Instant::now();
        let err = Destination::open(&path, Duration::from_millis(300))
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .contains("another sync held this destination until the deadline"),
            "{err}"
        );
        assert!((Duration::from_millis(300)..Duration::from_secs(2)).contains(&start.elapsed()));
        drop(held);
        assert!(Destination::open(&path, Duration::ZERO).is_ok());
    }

    #[test]
    fn leftovers_are_removed_and_occupied_paths_refused() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("config");
        let mut dest = Destination::open(&path, Duration::ZERO).unwrap();
        build(&mut dest, &[("a", "1")]);
        let staging = dest.staging().unwrap();
        let staged = staging.path().to_path_buf();
        staging.create(Path::new("half")).unwrap();
        std::mem::forget(staging); // "killed" mid-build
        std::fs::write(root.path().join(".config.bootstage/notes.txt"), "theirs").unwrap();
        drop(dest);
        let dest = Destination::open(&path, Duration::ZERO).unwrap();
        assert!(!staged.exists());
        assert_eq!(std::fs::read_to_string(path.join("a")).unwrap(), "1");
        assert_eq!(
            std::fs::read_to_string(root.path().join(".config.bootstage/notes.txt")).unwrap(),
            "theirs",
            "what bootstage did not make stays"
        );
        drop(dest);

        let plain = root.path().join("plain");
        std::fs::create_dir(&plain).unwrap();
        std::fs::write(plain.join("data"), "keep").unwrap();
        assert!(matches!(
            Destination::open(&plain, Duration::ZERO),
            Err(TreeError::Occupied { .. })
        ));
        assert_eq!(std::fs::read_to_string(plain.join("data")).unwrap(), "keep");
        let empty = root.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        assert!(
            !Destination::open(&empty, Duration::ZERO)
                .unwrap()
                .has_current()
        );
    }
}
