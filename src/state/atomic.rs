//! Atomic file writing: the one helper every writer in bootstage uses.
//!
//! A file is written to a temporary file in the same directory, created 0600 with
//! `O_EXCL` (never wider, not even for an instant and whatever the umask), fsynced,
//! renamed over the target, and the directory is fsynced. A reader sees the old file or
//! the new one, never a partial one. When several files belong together, all of them are
//! staged and synced before the first rename, so a failure while preparing any of them
//! leaves every previous file untouched.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

/// The prefix of every temporary file; a later run removes leftovers of a killed one.
pub const TEMP_PREFIX: &str = ".bootstage-tmp-";

/// Writes each `(path, contents)` atomically, 0600. On error, names the file that failed.
pub fn write_files(files: &[(&Path, &[u8])]) -> Result<(), (PathBuf, io::Error)> {
    let mut staged = Vec::with_capacity(files.len());
    for &(path, contents) in files {
        let temp = stage(path, contents).map_err(|e| (path.to_path_buf(), e))?;
        staged.push((path, temp));
    }
    let mut dirs = Vec::new();
    for (path, temp) in staged {
        temp.persist(path)
            .map_err(|e| (path.to_path_buf(), e.error))?;
        let dir = parent(path);
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    for dir in dirs {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| (dir.to_path_buf(), e))?;
    }
    Ok(())
}

/// Writes one file atomically, 0600.
pub fn write_file(path: &Path, contents: &[u8]) -> Result<(), (PathBuf, io::Error)> {
    write_files(&[(path, contents)])
}

fn stage(path: &Path, contents: &[u8]) -> io::Result<NamedTempFile> {
    // tempfile creates with O_EXCL and mode 0600; a umask can only narrow that.
    let mut temp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempfile_in(parent(path))?;
    temp.write_all(contents)?;
    temp.as_file().sync_all()?;
    Ok(temp)
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Removes temporary files that a killed run left in `dir`. Call only while holding the
/// directory's lock, so no live writer's file is removed.
pub fn remove_leftovers(dir: &Path) -> io::Result<usize> {
    let mut removed = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_whole_files_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        fs::write(&a, "old").unwrap();
        write_files(&[(&a, b"new a"), (&b, b"new b")]).unwrap();
        assert_eq!(fs::read_to_string(&a).unwrap(), "new a");
        assert_eq!(fs::read_to_string(&b).unwrap(), "new b");
        for p in [&a, &b] {
            assert_eq!(
                fs::metadata(p).unwrap().permissions().mode() & 0o7777,
                0o600
            );
        }
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn a_failed_stage_leaves_every_previous_file_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        fs::write(&a, "old").unwrap();
        let unwritable = dir.path().join("missing-dir/b");
        let (path, _) = write_files(&[(&a, b"new"), (&unwritable, b"x")]).unwrap_err();
        assert_eq!(path, unwritable);
        assert_eq!(fs::read_to_string(&a).unwrap(), "old");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn leftovers_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(format!("{TEMP_PREFIX}abc")), "x").unwrap();
        fs::write(dir.path().join("keep"), "x").unwrap();
        assert_eq!(remove_leftovers(dir.path()).unwrap(), 1);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
