//! A tree being built for a destination (its staging directory in the home): directories
//! made root-only, files created or carried forward from the current generation by hard
//! link, and the whole handed to its owner bottom-up only once complete
//! ([`Staging::finish`]); removed if dropped before [`super::Destination::commit`] takes it.
//! Every step is relative to the tree's directory descriptors (`fsat::Dirs`).

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::fcntl::AtFlags;
use nix::unistd::{Gid, Uid};

use super::{Destination, TreeError, io_at};
use crate::sync::fsat::{self, io};

/// Room left on a staging tree's file system.
#[derive(Debug, Clone, Copy)]
pub struct Room {
    pub bytes: u64,
    pub inodes: u64,
    /// Its block size: what the smallest file costs.
    pub block: u64,
}

/// A tree being built.
pub struct Staging {
    pub(super) home: OwnedFd,
    pub(super) name: OsString,
    pub(super) dir: OwnedFd,
    /// Its directories, each opened once for this pass.
    pub(super) dirs: fsat::Dirs,
    pub(super) path: PathBuf,
}

impl Staging {
    /// Where the tree is built, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates the directories of the tree, parents first, root-only until `finish`.
    pub fn mkdirs(&self, dirs: &BTreeSet<PathBuf>) -> Result<(), TreeError> {
        for dir in dirs {
            let (parent, name) = self.dirs.parent(dir).map_err(io_at(&self.path.join(dir)))?;
            let made = fsat::mkdir(&*parent, name, 0o700).map_err(io_at(&self.path.join(dir)))?;
            self.dirs.keep(dir, made);
        }
        Ok(())
    }

    /// Carries `rel` forward from the current generation with a hard link, if it is
    /// untouched there and the new name is that very inode once linked. `false`: fetch it.
    pub fn carry(&self, dest: &Destination, rel: &Path) -> bool {
        let (Some(checked), Some(current)) =
            (dest.untouched(rel, fsat::is_file), dest.current.as_ref())
        else {
            return false;
        };
        let Ok((from, name)) = current.dirs.parent(rel) else {
            return false;
        };
        let Ok((to, _)) = self.dirs.parent(rel) else {
            return false;
        };
        if nix::unistd::linkat(&*from, name, &*to, name, AtFlags::empty()).is_err() {
            return false;
        }
        match fsat::stat_at(&*to, name) {
            Ok(st)
                if fsat::is_file(&st)
                    && st.st_ino == checked.st_ino
                    && st.st_dev == checked.st_dev =>
            {
                true
            }
            _ => {
                tracing::warn!(file = %rel.display(), "the current generation's file changed while it was carried forward; fetching it");
                let _ = fsat::remove_file(&*to, name);
                false
            }
        }
    }

    /// A new directory at `rel` (its parent exists), root-only until `finish`; one that is
    /// there already as a directory is fine. `EEXIST` when something else is.
    pub fn make_dir(&self, rel: &Path) -> io::Result<()> {
        let (parent, name) = self.dirs.parent(rel)?;
        match fsat::mkdir(&*parent, name, 0o700) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                match fsat::is_dir(&fsat::stat_at(&*parent, name)?) {
                    true => Ok(()),
                    false => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// A new symlink at `rel` to `target` (checked by the caller: it stays in the tree).
    pub fn symlink(&self, rel: &Path, target: &Path) -> io::Result<()> {
        let (parent, name) = self.dirs.parent(rel)?;
        nix::unistd::symlinkat(target, &*parent, name).map_err(io)
    }

    /// What may still be written to the staging tree's file system: what is available to
    /// unprivileged users, less 1 % of the file system (bytes and inodes) kept for
    /// everyone else.
    pub fn room(&self) -> io::Result<Room> {
        let vfs = nix::sys::statvfs::fstatvfs(&self.dir).map_err(io)?;
        let block = vfs.fragment_size().max(512);
        let keep = vfs.blocks() * block / 100;
        let inodes = match vfs.files() {
            // No inode count (btrfs and others allocate them as needed).
            0 => u64::MAX,
            total => vfs.files_available().saturating_sub(total / 100),
        };
        Ok(Room {
            bytes: (vfs.blocks_available() * block).saturating_sub(keep),
            inodes,
            block,
        })
    }

    /// A new file at `rel`, 0600, for a download.
    pub fn create(&self, rel: &Path) -> Result<File, TreeError> {
        let at = self.path.join(rel);
        let (dir, name) = self.dirs.parent(rel).map_err(io_at(&at))?;
        fsat::create_file(&*dir, name).map_err(io_at(&at))
    }

    /// Removes the file at `rel` (a download that failed, before it is tried again).
    pub fn remove(&self, rel: &Path) {
        if let Ok((dir, name)) = self.dirs.parent(rel) {
            let _ = fsat::remove_file(&*dir, name);
        }
    }

    /// Hands the complete tree over: each file (with its own mode), each symlink, then
    /// each directory deepest first, then the tree's root, gets `uid`/`gid` (when given)
    /// and its mode, on its own descriptor (a symlink's owner with `AT_SYMLINK_NOFOLLOW`).
    pub fn finish<'a>(
        &self,
        files: impl IntoIterator<Item = (&'a Path, u32)>,
        links: &[PathBuf],
        dirs: &BTreeSet<PathBuf>,
        (uid, gid): (Option<Uid>, Option<Gid>),
        dir_mode: u32,
    ) -> Result<(), TreeError> {
        for (rel, file_mode) in files {
            let at = self.path.join(rel);
            let (dir, name) = self.dirs.parent(rel).map_err(io_at(&at))?;
            let (file, _) = fsat::open_file(&*dir, name).map_err(io_at(&at))?;
            fsat::set_owner_mode(&file, uid, gid, file_mode).map_err(io_at(&at))?;
        }
        if uid.is_some() || gid.is_some() {
            for rel in links {
                let at = self.path.join(rel);
                let (dir, name) = self.dirs.parent(rel).map_err(io_at(&at))?;
                nix::unistd::fchownat(&*dir, name, uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW)
                    .map_err(|e| io_at(&at)(io(e)))?;
            }
        }
        let mut deepest_first: Vec<&PathBuf> = dirs.iter().collect();
        deepest_first.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for rel in deepest_first {
            let at = self.path.join(rel);
            let dir = self.dirs.dir(rel).map_err(io_at(&at))?;
            fsat::set_owner_mode(&*dir, uid, gid, dir_mode).map_err(io_at(&at))?;
        }
        fsat::set_owner_mode(&self.dir, uid, gid, dir_mode).map_err(io_at(&self.path))
    }

    /// The descriptor of the built tree, once it is renamed to a generation: nothing is
    /// removed on drop any more.
    pub(super) fn take(mut self) -> OwnedFd {
        let dir = self
            .dir
            .try_clone()
            .expect("a descriptor can be duplicated");
        self.name = OsString::new();
        dir
    }
}

/// A staging dir that is dropped without being committed (an error, a timeout, SIGTERM)
/// is removed; after a commit it no longer exists under its staging name.
impl Drop for Staging {
    fn drop(&mut self) {
        if !self.name.is_empty() {
            let _ = fsat::remove_tree(&self.home, &self.name);
        }
    }
}
