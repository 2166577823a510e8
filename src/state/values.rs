//! The parameters' values as one set: `params.json`, `params.env`, `hooks.env` and
//! `credentials/`, swapped together by one rename, so a reader never sees one file's new
//! value beside another's old one.
//!
//! Layout in the state dir (root's, 0700):
//!
//! ```text
//! params.json  -> .values/current/params.json      (fixed links: the paths units and
//! params.env   -> .values/current/params.env        apps name never change)
//! hooks.env    -> .values/current/hooks.env
//! credentials  -> .values/current/credentials
//! .values/current -> 7                              (the one link a write swaps)
//! .values/7/{params.json, params.env, hooks.env, credentials/NAME}
//! .values/6/…                                       (the set before, kept until the next write)
//! ```
//!
//! A write builds the next generation beside the current one (a file whose contents did
//! not change is hard-linked from the current generation: same inode, same mtime),
//! fsyncs it, then renames a new `current` link over the old one and fsyncs `.values`.
//! A set equal to the current one writes nothing at all. The previous generation is kept
//! until the next write, so a reader halfway through resolving a path never finds it
//! gone; older ones and a killed write's leftovers are removed by the next write (which
//! holds the state dir's lock). Files are 0600 and directories 0700, created so.
//! `credentials/` exists from the first set with a secret on (emptied when none is left,
//! as units may name it); before that the link leads nowhere, as the directory did not
//! exist.
//!
//! A state dir written by an older bootstage (plain files, a real `credentials/`) is
//! moved to this layout by the first write: each file replaced by its link with one
//! rename, the directory exchanged with its link (`renameat2(RENAME_EXCHANGE)`).

use std::ffi::OsString;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::state::atomic::TEMP_PREFIX;

/// The directory of the generations, in the state dir.
pub const DIR: &str = ".values";
/// The link in [`DIR`] that names the current generation.
const CURRENT: &str = "current";
/// The files of a set, by the names they have in the state dir and in a generation.
pub const FILES: [&str; 3] = ["params.json", "params.env", "hooks.env"];
/// The credentials' directory, likewise.
pub const CREDENTIALS: &str = "credentials";

/// One set of values, as bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    pub params_json: Vec<u8>,
    pub params_env: Vec<u8>,
    pub hooks_env: Vec<u8>,
    /// One file each under `credentials/`, by name (a name checked by `secrets::refs`).
    pub credentials: Vec<(String, Vec<u8>)>,
}

impl Set {
    fn files(&self) -> [(&'static str, &[u8]); 3] {
        [
            (FILES[0], &self.params_json),
            (FILES[1], &self.params_env),
            (FILES[2], &self.hooks_env),
        ]
    }
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// A new generation is current; the files named changed.
    Swapped { changed: usize },
    /// The set was the current one: nothing was written.
    Unchanged,
}

type Result<T> = std::result::Result<T, (PathBuf, io::Error)>;

fn at(path: &Path) -> impl FnOnce(io::Error) -> (PathBuf, io::Error) + '_ {
    move |e| (path.to_path_buf(), e)
}

/// Makes `set` the current values of the state dir `root` (which exists). Call only while
/// holding the state dir's lock.
pub fn write(root: &Path, set: &Set) -> Result<Written> {
    stage(root, set)?.commit()
}

/// A set built beside the current one, not yet current.
#[must_use]
pub enum Staged {
    /// The set is the current one: nothing to do.
    Unchanged,
    Built {
        root: PathBuf,
        /// The new generation's name in [`DIR`].
        next: String,
        changed: usize,
        /// The fixed links are there already (else an older layout is moved over).
        links_ok: bool,
    },
}

/// The first half of [`write`]: builds the generation (durably) and returns it to be made
/// current by [`Staged::commit`], so a caller can write what goes with it in between.
/// A failure here leaves the current values as they were.
pub fn stage(root: &Path, set: &Set) -> Result<Staged> {
    let home = root.join(DIR);
    DirBuilder::new()
        .mode(0o700)
        .create(&home)
        .or_else(|e| match e.kind() {
            io::ErrorKind::AlreadyExists if is_dir(&home) => Ok(()),
            _ => Err(e),
        })
        .map_err(at(&home))?;
    let current = current(&home);
    let links_ok = links_in_place(root);
    let current_dir = current.as_ref().map(|name| home.join(name));
    if let Some(dir) = &current_dir
        && links_ok
        && holds(dir, set)
    {
        return Ok(Staged::Unchanged);
    }
    // Whatever is neither current nor its link is an older generation or a killed
    // write's leftover: gone before the next one is built.
    for entry in fs::read_dir(&home).map_err(at(&home))? {
        let entry = entry.map_err(at(&home))?;
        let name = entry.file_name();
        if name == CURRENT || Some(&name) == current.as_ref() {
            continue;
        }
        remove(&entry.path())?;
    }
    let next = next_name(current.as_ref());
    let changed = build(&home.join(&next), current_dir.as_deref(), set)?;
    Ok(Staged::Built {
        root: root.to_path_buf(),
        next,
        changed,
        links_ok,
    })
}

impl Staged {
    /// Makes the built generation current: a new link renamed over `current`, then
    /// `.values` made durable (and, the first time, the fixed links put in place).
    pub fn commit(self) -> Result<Written> {
        let Staged::Built {
            root,
            next,
            changed,
            links_ok,
        } = self
        else {
            return Ok(Written::Unchanged);
        };
        let home = root.join(DIR);
        let link = home.join(format!("{TEMP_PREFIX}current"));
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&next, &link).map_err(at(&link))?;
        fs::rename(&link, home.join(CURRENT)).map_err(at(&home))?;
        sync_dir(&home)?;
        if !links_ok {
            place_links(&root)?;
        }
        Ok(Written::Swapped { changed })
    }
}

/// The current generation's name, if `current` names one that exists.
fn current(home: &Path) -> Option<OsString> {
    let target = fs::read_link(home.join(CURRENT)).ok()?;
    let name = target.into_os_string();
    let numeric = name
        .to_str()
        .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()));
    (numeric && is_dir(&home.join(&name))).then_some(name)
}

fn is_dir(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
}

/// One more than the current generation (the only one left when it is called).
fn next_name(current: Option<&OsString>) -> String {
    let number = |n: &OsString| n.to_str().and_then(|n| n.parse::<u64>().ok());
    let highest = current.and_then(number).unwrap_or(0);
    (highest + 1).to_string()
}

/// What each fixed link in the state dir must say.
fn link_target(name: &str) -> PathBuf {
    Path::new(DIR).join(CURRENT).join(name)
}

fn links_in_place(root: &Path) -> bool {
    FILES
        .iter()
        .chain([&CREDENTIALS])
        .all(|name| fs::read_link(root.join(name)).is_ok_and(|t| t == link_target(name)))
}

/// Whether the generation `dir` holds exactly `set`.
fn holds(dir: &Path, set: &Set) -> bool {
    let same = |path: &Path, want: &[u8]| fs::read(path).is_ok_and(|have| have == want);
    if !set
        .files()
        .iter()
        .all(|(name, want)| same(&dir.join(name), want))
    {
        return false;
    }
    let credentials = dir.join(CREDENTIALS);
    let names: Vec<OsString> = match fs::read_dir(&credentials) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(_) => return false,
    };
    names.len() == set.credentials.len()
        && set
            .credentials
            .iter()
            .all(|(name, want)| same(&credentials.join(name), want))
}

/// Builds the generation `dir` from `set`, hard-linking from `current` each file whose
/// contents are the same; returns how many files it wrote anew. Everything is fsynced.
fn build(dir: &Path, current: Option<&Path>, set: &Set) -> Result<usize> {
    let mut written = 0;
    make_dir(dir)?;
    for (name, contents) in set.files() {
        written += put(dir, current, name, contents)? as usize;
    }
    // Once there, `credentials/` stays (emptied when no secret is left), as units may
    // name it.
    let had = current.is_some_and(|c| is_dir(&c.join(CREDENTIALS)));
    if !set.credentials.is_empty() || had {
        let credentials = dir.join(CREDENTIALS);
        make_dir(&credentials)?;
        let from = current.map(|c| c.join(CREDENTIALS));
        for (name, contents) in &set.credentials {
            written += put(&credentials, from.as_deref(), name, contents)? as usize;
        }
        sync_dir(&credentials)?;
    }
    sync_dir(dir)?;
    Ok(written)
}

fn make_dir(dir: &Path) -> Result<()> {
    DirBuilder::new().mode(0o700).create(dir).map_err(at(dir))
}

/// `name` in `dir`: a hard link to the same file of `current` when its contents are
/// `contents` (and it is a plain file of ours), else a new file. True when new.
fn put(dir: &Path, current: Option<&Path>, name: &str, contents: &[u8]) -> Result<bool> {
    let path = dir.join(name);
    if let Some(old) = current.map(|c| c.join(name))
        && fs::symlink_metadata(&old).is_ok_and(|m| m.is_file())
        && fs::read(&old).is_ok_and(|have| have == contents)
        && fs::hard_link(&old, &path).is_ok()
    {
        return Ok(false);
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(&path)
        .map_err(at(&path))?;
    file.write_all(contents).map_err(at(&path))?;
    file.sync_all().map_err(at(&path))?;
    Ok(true)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(at(dir))
}

fn remove(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map_err(at(path)),
        Ok(_) => fs::remove_file(path).map_err(at(path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err((path.to_path_buf(), e)),
    }
}

/// Puts each fixed link in place of whatever is there: a file (or a wrong link) by one
/// rename over it, a directory by exchanging the two, the old one then removed.
fn place_links(root: &Path) -> Result<()> {
    let home = root.join(DIR);
    for name in FILES.iter().chain([&CREDENTIALS]) {
        let path = root.join(name);
        if fs::read_link(&path).is_ok_and(|t| t == link_target(name)) {
            continue;
        }
        let link = root.join(format!("{TEMP_PREFIX}link-{name}"));
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(link_target(name), &link).map_err(at(&link))?;
        if !is_dir(&path) {
            fs::rename(&link, &path).map_err(at(&path))?;
            continue;
        }
        // A real directory (an older layout's credentials/): exchanged with the link in
        // one step, so the path never goes missing, then removed where it landed.
        let aside = home.join(format!("{TEMP_PREFIX}old-{name}"));
        remove(&aside)?;
        fs::rename(&link, &aside).map_err(at(&aside))?;
        let exchanged = nix::fcntl::renameat2(
            nix::fcntl::AT_FDCWD,
            &aside,
            nix::fcntl::AT_FDCWD,
            &path,
            nix::fcntl::RenameFlags::RENAME_EXCHANGE,
        );
        if exchanged.is_err() {
            // No exchange on this file system: the directory aside, then the link in.
            let old = home.join(format!("{TEMP_PREFIX}older-{name}"));
            fs::rename(&path, &old).map_err(at(&path))?;
            fs::rename(&aside, &path).map_err(at(&path))?;
            remove(&old)?;
        } else {
            remove(&aside)?;
        }
    }
    sync_dir(root)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn set(password: &str, extra: Option<&str>) -> Set {
        let mut credentials = vec![("db.password".to_string(), password.as_bytes().to_vec())];
        if let Some(extra) = extra {
            credentials.push(("api.token".to_string(), extra.as_bytes().to_vec()));
        }
        Set {
            params_json: b"{\"port\": 8080}\n".to_vec(),
            params_env: format!("DB_PASSWORD=\"{password}\"\nPORT=\"8080\"\n").into_bytes(),
            hooks_env: b"PORT=\"8080\"\n".to_vec(),
            credentials,
        }
    }

    /// (inode, mtime) of each path, read through the fixed links.
    fn stamps(root: &Path, names: &[&str]) -> Vec<(u64, i64, i64)> {
        names
            .iter()
            .map(|n| {
                let m = fs::metadata(root.join(n)).unwrap();
                (m.ino(), m.mtime(), m.mtime_nsec())
            })
            .collect()
    }

    fn read(root: &Path, name: &str) -> String {
        fs::read_to_string(root.join(name)).unwrap()
    }

    #[test]
    fn a_set_is_written_behind_fixed_links_and_read_through_them() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        assert_eq!(
            write(root, &set("one", Some("tok"))).unwrap(),
            Written::Swapped { changed: 5 }
        );
        assert_eq!(
            read(root, "params.env"),
            "DB_PASSWORD=\"one\"\nPORT=\"8080\"\n"
        );
        assert_eq!(read(root, "credentials/db.password"), "one");
        assert_eq!(read(root, "credentials/api.token"), "tok");
        for name in FILES.iter().chain([&CREDENTIALS]) {
            assert_eq!(fs::read_link(root.join(name)).unwrap(), link_target(name));
        }
        let mode = |p: &str| fs::metadata(root.join(p)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(
            [
                mode("params.json"),
                mode("credentials"),
                mode("credentials/api.token"),
                mode(".values"),
                mode(".values/1")
            ],
            [0o600, 0o700, 0o600, 0o700, 0o700]
        );
    }

    #[test]
    fn the_same_set_writes_nothing_and_a_change_writes_only_what_changed() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        write(root, &set("one", Some("tok"))).unwrap();
        let all = [
            "params.json",
            "params.env",
            "hooks.env",
            "credentials/db.password",
            "credentials/api.token",
        ];
        let before = stamps(root, &all);
        let home_before = fs::metadata(root.join(DIR)).unwrap().mtime_nsec();
        assert_eq!(
            write(root, &set("one", Some("tok"))).unwrap(),
            Written::Unchanged
        );
        assert_eq!(stamps(root, &all), before);
        assert_eq!(
            fs::metadata(root.join(DIR)).unwrap().mtime_nsec(),
            home_before
        );
        assert_eq!(
            fs::read_link(root.join(".values/current")).unwrap(),
            Path::new("1")
        );
        // The password rotates: params.env and its credential are new files, the rest
        // the same inodes with the same mtimes.
        assert_eq!(
            write(root, &set("two", Some("tok"))).unwrap(),
            Written::Swapped { changed: 2 }
        );
        let after = stamps(root, &all);
        let same: Vec<bool> = before.iter().zip(&after).map(|(a, b)| a == b).collect();
        assert_eq!(same, [true, false, true, false, true]);
        assert_eq!(read(root, "credentials/db.password"), "two");
        assert_eq!(
            fs::read_link(root.join(".values/current")).unwrap(),
            Path::new("2")
        );
        // A credential that leaves the set leaves the current generation; the previous
        // one is kept until the next write, older ones go.
        write(root, &set("two", None)).unwrap();
        assert!(!root.join("credentials/api.token").exists());
        let mut gens: Vec<String> = fs::read_dir(root.join(DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        gens.sort();
        assert_eq!(gens, ["2", "3", "current"]);
    }

    #[test]
    fn no_credentials_leaves_no_credentials_directory_until_there_were_some() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        let mut none = set("x", None);
        none.credentials.clear();
        write(root, &none).unwrap();
        assert!(!root.join("credentials").exists());
        assert_eq!(write(root, &none).unwrap(), Written::Unchanged);
        // Once there, the directory stays, emptied.
        write(root, &set("x", None)).unwrap();
        assert_eq!(fs::read_dir(root.join("credentials")).unwrap().count(), 1);
        write(root, &none).unwrap();
        assert_eq!(fs::read_dir(root.join("credentials")).unwrap().count(), 0);
        assert_eq!(write(root, &none).unwrap(), Written::Unchanged);
    }

    #[test]
    fn an_older_layout_is_moved_over_and_a_killed_write_cleaned_up() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        fs::write(root.join("params.env"), "OLD=1\n").unwrap();
        fs::write(root.join("instance.json"), "{}").unwrap();
        fs::create_dir(root.join("credentials")).unwrap();
        fs::write(root.join("credentials/gone"), "old secret").unwrap();
        // A killed write: a half-built generation and a stray link.
        fs::create_dir_all(root.join(".values/9/credentials")).unwrap();
        fs::write(root.join(".values/9/params.env"), "half").unwrap();
        write(root, &set("one", None)).unwrap();
        assert_eq!(
            read(root, "params.env"),
            "DB_PASSWORD=\"one\"\nPORT=\"8080\"\n"
        );
        assert_eq!(read(root, "credentials/db.password"), "one");
        assert!(!root.join("credentials/gone").exists());
        assert_eq!(read(root, "instance.json"), "{}");
        let mut names: Vec<String> = fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                ".values",
                "credentials",
                "hooks.env",
                "instance.json",
                "params.env",
                "params.json"
            ]
        );
        let mut gens: Vec<String> = fs::read_dir(root.join(DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        gens.sort();
        assert_eq!(gens, ["1", "current"]);
    }
}
