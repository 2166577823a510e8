//! Filesystem steps relative to directory descriptors, never following a symlink: what
//! root uses inside a tree that an app user may be able to write.
//!
//! Every path given here is relative to a directory descriptor and is walked one
//! component at a time with `O_DIRECTORY|O_NOFOLLOW`, so a component swapped for a symlink
//! fails (`ELOOP`/`ENOTDIR`) instead of leading elsewhere. Files are opened with
//! `O_NOFOLLOW`; modes and owners are set on descriptors; removal is `unlinkat`, which
//! never follows a link.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat, mkdirat};
use nix::unistd::{UnlinkatFlags, unlinkat};

pub fn io(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

const DIR_FLAGS: OFlag = OFlag::O_DIRECTORY
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC)
    .union(OFlag::O_RDONLY);

/// Opens the directory `name` in `dir`, not through a symlink.
pub fn open_dir(dir: impl AsFd, name: &OsStr) -> io::Result<OwnedFd> {
    openat(dir, name, DIR_FLAGS, Mode::empty()).map_err(io)
}

/// Opens the directory at `rel` (empty: `root` itself) below `root`, component by
/// component, none of them a symlink.
pub fn open_dir_at(root: &OwnedFd, rel: &Path) -> io::Result<OwnedFd> {
    let mut dir = root.try_clone()?;
    for component in rel.components() {
        match component {
            Component::Normal(name) => dir = open_dir(&dir, name)?,
            Component::CurDir => {}
            _ => return Err(io::Error::other("not a plain relative path")),
        }
    }
    Ok(dir)
}

/// The parent directory of `rel` below `root`, and `rel`'s last component.
pub fn parent_at<'a>(root: &OwnedFd, rel: &'a Path) -> io::Result<(OwnedFd, &'a OsStr)> {
    let name = rel
        .file_name()
        .ok_or_else(|| io::Error::other("no file name"))?;
    let parent = rel.parent().unwrap_or(Path::new(""));
    Ok((open_dir_at(root, parent)?, name))
}

/// At most this many directories a [`Dirs`] keeps open; past it, it closes them all and
/// opens again as asked (a tree this wide costs a reopen per 256 directories, never more
/// descriptors).
pub const MAX_OPEN_DIRS: usize = 256;

/// The directories below one root descriptor, each opened once for as long as the cache
/// lives (one pass over a tree), so a step on a file costs no `openat` per component of
/// its path. Each is opened as [`open_dir_at`] opens it: one component at a time, relative
/// to its parent's descriptor, `O_DIRECTORY|O_NOFOLLOW`: a component that is a symlink
/// when first opened fails as it does there. Once open, a directory is that directory: a
/// component swapped for a symlink later is not followed either, as the descriptor does
/// not go through the name again. Only directories that opened are kept; at most
/// [`MAX_OPEN_DIRS`].
pub struct Dirs {
    root: std::sync::Arc<OwnedFd>,
    open: std::sync::Mutex<std::collections::HashMap<PathBuf, std::sync::Arc<OwnedFd>>>,
}

impl Dirs {
    pub fn new(root: &OwnedFd) -> io::Result<Dirs> {
        Ok(Dirs {
            root: std::sync::Arc::new(root.try_clone()?),
            open: Default::default(),
        })
    }

    /// The directory at `rel` (empty: the root).
    pub fn dir(&self, rel: &Path) -> io::Result<std::sync::Arc<OwnedFd>> {
        let mut key = PathBuf::new();
        for component in rel.components() {
            match component {
                Component::Normal(name) => key.push(name),
                Component::CurDir => {}
                _ => return Err(io::Error::other("not a plain relative path")),
            }
        }
        self.open_key(&key)
    }

    /// `rel`'s parent directory, and `rel`'s last component.
    pub fn parent<'a>(&self, rel: &'a Path) -> io::Result<(std::sync::Arc<OwnedFd>, &'a OsStr)> {
        let name = rel
            .file_name()
            .ok_or_else(|| io::Error::other("no file name"))?;
        Ok((self.dir(rel.parent().unwrap_or(Path::new("")))?, name))
    }

    /// Keeps `dir`, just made at `rel` (by [`mkdir`]), as that directory: no second open.
    pub fn keep(&self, rel: &Path, dir: OwnedFd) {
        let key: PathBuf = rel
            .components()
            .filter(|c| !matches!(c, Component::CurDir))
            .collect();
        let mut open = self.open.lock().unwrap();
        if open.len() >= MAX_OPEN_DIRS {
            open.clear();
        }
        open.insert(key, std::sync::Arc::new(dir));
    }

    fn open_key(&self, key: &Path) -> io::Result<std::sync::Arc<OwnedFd>> {
        let Some(name) = key.file_name() else {
            return Ok(self.root.clone());
        };
        if let Some(dir) = self.open.lock().unwrap().get(key) {
            return Ok(dir.clone());
        }
        let parent = self.open_key(key.parent().unwrap_or(Path::new("")))?;
        let dir = std::sync::Arc::new(open_dir(&*parent, name)?);
        let mut open = self.open.lock().unwrap();
        if open.len() >= MAX_OPEN_DIRS {
            open.clear();
        }
        open.insert(key.to_path_buf(), dir.clone());
        Ok(dir)
    }
}

/// `lstat` of `name` in `dir`.
pub fn stat_at(dir: impl AsFd, name: &OsStr) -> io::Result<FileStat> {
    fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(io)
}

pub fn is_dir(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
}

pub fn is_file(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG
}

pub fn is_symlink(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK
}

/// Creates the directory `name` in `dir` with exactly `mode` (whatever the umask), and
/// opens it.
pub fn mkdir(dir: impl AsFd + Copy, name: &OsStr, mode: u32) -> io::Result<OwnedFd> {
    mkdirat(dir, name, Mode::from_bits_truncate(0o700)).map_err(io)?;
    let fd = open_dir(dir, name)?;
    nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(mode)).map_err(io)?;
    Ok(fd)
}

/// Creates the file `name` in `dir`: new (`O_EXCL`), 0600, not through a symlink.
pub fn create_file(dir: impl AsFd, name: &OsStr) -> io::Result<std::fs::File> {
    let flags =
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = openat(dir, name, flags, Mode::from_bits_truncate(0o600)).map_err(io)?;
    Ok(std::fs::File::from(fd))
}

/// Opens an existing regular file `name` in `dir` to read it or set its mode and owner:
/// not through a symlink, never blocking on a FIFO, and refused unless it is a regular
/// file once open.
pub fn open_file(dir: impl AsFd, name: &OsStr) -> io::Result<(std::fs::File, FileStat)> {
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let fd = openat(dir, name, flags, Mode::empty()).map_err(io)?;
    let st = fstat(&fd).map_err(io)?;
    if !is_file(&st) {
        return Err(io::Error::other("not a regular file"));
    }
    Ok((std::fs::File::from(fd), st))
}

/// Sets owner (when given) and then mode on an open descriptor: chown first, since it
/// clears setuid and setgid bits.
pub fn set_owner_mode(
    fd: impl AsFd + Copy,
    uid: Option<nix::unistd::Uid>,
    gid: Option<nix::unistd::Gid>,
    mode: u32,
) -> io::Result<()> {
    if uid.is_some() || gid.is_some() {
        nix::unistd::fchown(fd, uid, gid).map_err(io)?;
    }
    nix::sys::stat::fchmod(fd, Mode::from_bits_truncate(mode)).map_err(io)
}

/// The names in a directory, `.` and `..` left out.
pub fn names(dir: &OwnedFd) -> io::Result<Vec<OsString>> {
    let fd = dir.try_clone()?;
    let mut dir = nix::dir::Dir::from_fd(fd).map_err(io)?;
    let mut out = Vec::new();
    for entry in dir.iter() {
        let entry = entry.map_err(io)?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            out.push(OsStr::from_bytes(name).to_os_string());
        }
    }
    Ok(out)
}

/// Removes `name` from `dir`, and everything below it if it is a directory, without ever
/// following a symlink: a link planted anywhere in the tree is removed, not its target.
pub fn remove_tree(dir: &OwnedFd, name: &OsStr) -> io::Result<()> {
    let st = match stat_at(dir, name) {
        Ok(st) => st,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if is_dir(&st) {
        let inner = open_dir(dir, name)?;
        for child in names(&inner)? {
            remove_tree(&inner, &child)?;
        }
        unlinkat(dir, name, UnlinkatFlags::RemoveDir).map_err(io)
    } else {
        unlinkat(dir, name, UnlinkatFlags::NoRemoveDir).map_err(io)
    }
}

/// Removes the file (not directory) `name` from `dir`.
pub fn remove_file(dir: impl AsFd, name: &OsStr) -> io::Result<()> {
    unlinkat(dir, name, UnlinkatFlags::NoRemoveDir).map_err(io)
}

/// Writes `name` in `dir` atomically: a new temporary file (0600, `O_EXCL`, not through
/// a symlink), fsynced, renamed over `name`, and the directory fsynced; the contents
/// written by `write` as they are made (through a buffer),
/// never whole in memory.
pub fn write_atomic_with(
    dir: &OwnedFd,
    name: &str,
    write: impl FnOnce(&mut dyn std::io::Write) -> io::Result<()>,
) -> io::Result<()> {
    use std::io::Write;
    let temp = format!("{}{name}.{}", crate::state::atomic::TEMP_PREFIX, unique());
    let file = create_file(dir, OsStr::new(&temp))?;
    let mut buffered = std::io::BufWriter::with_capacity(64 * 1024, file);
    let written = write(&mut buffered)
        .and_then(|()| buffered.flush())
        .and_then(|()| buffered.into_inner().map_err(|e| e.into_error()))
        .and_then(|file| file.sync_all())
        .and_then(|()| nix::fcntl::renameat(dir, temp.as_str(), dir, name).map_err(io));
    if let Err(e) = written {
        let _ = remove_file(dir, OsStr::new(&temp));
        return Err(e);
    }
    nix::unistd::fsync(dir).map_err(io)
}

/// Why [`open_dir_path`] refused a path.
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    /// A symlink on the way that root must not follow.
    #[error("{} is {why}", at.display())]
    Symlink { at: PathBuf, why: String },
    #[error("{}: {source}", at.display())]
    Io { at: PathBuf, source: io::Error },
}

/// How many symlinks one walk follows at most (the kernel's `MAXSYMLINKS`).
const MAX_SYMLINKS: u32 = 40;

/// Opens the directory at the absolute `path` from `/`, one component at a time with
/// `O_NOFOLLOW`, creating missing ones (owned by the caller, exactly 0755) when `create`
/// says so. A component that is a symlink is followed only where nobody but root could
/// have made or changed it: root (or the caller) owns the link and every directory from
/// `/` down to it, and none of those directories lets another user replace the link
/// (not group- or world-writable, unless sticky). This is systemd-tmpfiles' and `chase()`'s
/// unsafe-transition rule: `/var/run -> ../run` is followed, `/srv/app/etc -> /var/lib/x`
/// planted by the app that owns `/srv/app` is refused. A followed link's target is walked
/// by the same rules, and `..` goes back one directory of the walk, as the kernel would.
pub fn open_dir_path(path: &Path, create: bool) -> Result<OwnedFd, WalkError> {
    let me = nix::unistd::geteuid().as_raw();
    let fail = |at: &Path| {
        let at = at.to_path_buf();
        move |source: io::Error| WalkError::Io { at, source }
    };
    // Trusted: nobody but root (or us) can change what this directory holds.
    let trusted = |st: &FileStat| {
        (st.st_uid == 0 || st.st_uid == me) && (st.st_mode & 0o022 == 0 || st.st_mode & 0o1000 != 0)
    };
    let root = Path::new("/");
    let fd = openat(nix::fcntl::AT_FDCWD, root, DIR_FLAGS, Mode::empty())
        .map_err(|e| fail(root)(io(e)))?;
    let st = fstat(&fd).map_err(|e| fail(root)(io(e)))?;
    // The walk so far: each directory, whether it and all above it are trusted.
    let mut stack = vec![(fd, trusted(&st))];
    let mut shown = PathBuf::from("/");
    let mut todo: std::collections::VecDeque<OsString> = std::collections::VecDeque::new();
    let push_front = |todo: &mut std::collections::VecDeque<OsString>, path: &Path| {
        for component in path.components().rev() {
            match component {
                Component::Normal(name) => todo.push_front(name.to_os_string()),
                Component::ParentDir => todo.push_front(OsString::from("..")),
                Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            }
        }
    };
    if !path.is_absolute() {
        return Err(fail(path)(io::Error::other("not an absolute path")));
    }
    push_front(&mut todo, path);
    let mut links = 0;
    while let Some(name) = todo.pop_front() {
        if name == ".." {
            if stack.len() > 1 {
                stack.pop();
            }
            shown.pop();
            continue;
        }
        let at = shown.join(&name);
        let (dir, dir_trusted) = stack.last().expect("the walk starts at /");
        let dir_trusted = *dir_trusted;
        let opened = match open_dir(dir, &name) {
            Err(e) if create && e.kind() == io::ErrorKind::NotFound => {
                match mkdir(dir, &name, 0o755) {
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => open_dir(dir, &name),
                    other => other,
                }
            }
            other => other,
        };
        match opened {
            Ok(fd) => {
                let st = fstat(&fd).map_err(|e| fail(&at)(io(e)))?;
                stack.push((fd, dir_trusted && trusted(&st)));
                shown = at;
            }
            Err(e)
                if [Errno::ELOOP, Errno::ENOTDIR]
                    .iter()
                    .any(|n| e.raw_os_error() == Some(*n as i32)) =>
            {
                let st = stat_at(dir, &name).map_err(fail(&at))?;
                if !is_symlink(&st) {
                    return Err(fail(&at)(e));
                }
                let why = if st.st_uid != 0 && st.st_uid != me {
                    Some(format!("a symlink owned by uid {}", st.st_uid))
                } else if !dir_trusted {
                    Some(format!(
                        "a symlink in {}, which a user other than root can change (it, or a \
                         directory above it, is owned by another user or writable by others)",
                        shown.display()
                    ))
                } else if links == MAX_SYMLINKS {
                    Some(format!("one of more than {MAX_SYMLINKS} symlinks in a row"))
                } else {
                    None
                };
                if let Some(why) = why {
                    return Err(WalkError::Symlink { at, why });
                }
                links += 1;
                let target =
                    nix::fcntl::readlinkat(dir, name.as_os_str()).map_err(|e| fail(&at)(io(e)))?;
                let target = Path::new(&target);
                if target.is_absolute() {
                    stack.truncate(1);
                    shown = PathBuf::from("/");
                }
                push_front(&mut todo, target);
            }
            Err(e) => return Err(fail(&at)(e)),
        }
    }
    Ok(stack.pop().expect("the walk starts at /").0)
}

/// A name no other run uses: time and pid.
pub fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{nanos:x}-{:x}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(dir: &Path) -> OwnedFd {
        std::fs::File::open(dir).unwrap().into()
    }

    /// The cache: a directory is opened once (the same descriptor every time, `./` or not),
    /// a symlink is never a directory of it (nor the way to one), `..` is refused, a
    /// directory stays the one first opened when its name is swapped for a symlink, and
    /// no more than MAX_OPEN_DIRS are kept.
    #[test]
    fn dirs_open_each_directory_once_never_through_a_symlink() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("a/b")).unwrap();
        std::fs::create_dir_all(t.path().join("elsewhere/b")).unwrap();
        std::os::unix::fs::symlink("elsewhere", t.path().join("link")).unwrap();
        let dirs = Dirs::new(&root(t.path())).unwrap();
        let first = dirs.dir(Path::new("a/b")).unwrap();
        assert!(std::sync::Arc::ptr_eq(
            &first,
            &dirs.dir(Path::new("./a/./b")).unwrap()
        ));
        let (parent, name) = dirs.parent(Path::new("a/b/file")).unwrap();
        assert!(std::sync::Arc::ptr_eq(&first, &parent));
        assert_eq!(name, "file");
        for bad in ["link", "link/b", "a/../link", "/a"] {
            assert!(dirs.dir(Path::new(bad)).is_err(), "{bad}");
        }
        // `a` swapped for a symlink to `elsewhere`: what was opened is still `a`'s `b`.
        std::fs::rename(t.path().join("a"), t.path().join("moved")).unwrap();
        std::os::unix::fs::symlink("elsewhere", t.path().join("a")).unwrap();
        create_file(&*dirs.dir(Path::new("a/b")).unwrap(), OsStr::new("f")).unwrap();
        assert!(t.path().join("moved/b/f").exists());
        assert!(!t.path().join("elsewhere/b/f").exists());
        for i in 0..MAX_OPEN_DIRS + 10 {
            std::fs::create_dir(t.path().join(format!("d{i}"))).unwrap();
            dirs.dir(Path::new(&format!("d{i}"))).unwrap();
            assert!(dirs.open.lock().unwrap().len() <= MAX_OPEN_DIRS);
        }
    }

    #[test]
    fn walks_refuse_symlinks_and_removal_never_follows_one() {
        let tmp = tempfile::tempdir().unwrap();
        let (tree, victim) = (tmp.path().join("tree"), tmp.path().join("victim"));
        std::fs::create_dir_all(tree.join("a/b")).unwrap();
        std::fs::create_dir(&victim).unwrap();
        std::fs::write(victim.join("keep"), "x").unwrap();
        std::os::unix::fs::symlink(&victim, tree.join("a/link")).unwrap();
        std::os::unix::fs::symlink(victim.join("keep"), tree.join("a/b/file")).unwrap();
        let fd = root(&tree);
        assert!(open_dir_at(&fd, Path::new("a/b")).is_ok());
        assert!(open_dir_at(&fd, Path::new("a/link")).is_err());
        let (b, name) = parent_at(&fd, Path::new("a/b/file")).unwrap();
        assert!(
            open_file(&b, name).is_err(),
            "a symlinked file is not opened"
        );
        assert!(create_file(&b, name).is_err(), "nor created through");
        remove_tree(&fd, OsStr::new("a")).unwrap();
        assert!(!tree.join("a").exists());
        assert_eq!(std::fs::read_to_string(victim.join("keep")).unwrap(), "x");
    }
}
