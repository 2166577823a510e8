//! Which object keys may become files under a sync destination, and where.
//!
//! A key (after the source prefix) maps to a relative path only if every `/`-separated
//! segment is a plain name: not empty (no leading `/`, no `a//b`), not `.` or `..`, no
//! control character, at most 255 bytes, the whole at most 4,096 bytes. Anything else is
//! refused, naming the key, and the sync fails with nothing swapped in: a deploy with a bad
//! key should be noticed, not half-applied. Keys ending in `/` are directory markers
//! (the console's "create folder") and are skipped: directories come from the files in
//! them. A key that is both a file and a directory (`a` and `a/b`) is refused too.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

const MAX_SEGMENT: usize = 255;
const MAX_PATH: usize = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("object key {key:?} cannot be a file under the destination: {why}")]
    Unsafe { key: String, why: &'static str },
    #[error("object keys {file:?} and {inside:?} need {file:?} to be both a file and a directory")]
    FileAndDir { file: String, inside: String },
}

/// The relative path for `rest` (the key with the source prefix removed); `None` for a
/// directory marker.
pub fn relative_path(key: &str, rest: &str) -> Result<Option<PathBuf>, KeyError> {
    let unsafe_key = |why| KeyError::Unsafe {
        key: key.to_string(),
        why,
    };
    if rest.is_empty() {
        return Ok(None); // the prefix itself
    }
    let (body, marker) = match rest.strip_suffix('/') {
        Some(body) => (body, true),
        None => (rest, false),
    };
    if body.len() > MAX_PATH {
        return Err(unsafe_key("it is longer than 4096 bytes"));
    }
    for segment in body.split('/') {
        match segment {
            "" => {
                return Err(unsafe_key(
                    "it has an empty path segment (a leading '/' or '//')",
                ));
            }
            "." | ".." => return Err(unsafe_key("it has a '.' or '..' segment")),
            s if s.len() > MAX_SEGMENT => {
                return Err(unsafe_key("a path segment is longer than 255 bytes"));
            }
            s if s.chars().any(char::is_control) => {
                return Err(unsafe_key("it contains a control character"));
            }
            _ => {}
        }
    }
    Ok((!marker).then(|| PathBuf::from(body)))
}

/// Refuses a set of paths where one file would have to be a directory of another.
pub fn check_no_file_dir_conflict<'a>(
    paths: impl IntoIterator<Item = (&'a str, &'a Path)>,
) -> Result<(), KeyError> {
    let paths: Vec<(&str, &Path)> = paths.into_iter().collect();
    let files: std::collections::HashMap<&Path, &str> =
        paths.iter().map(|&(k, p)| (p, k)).collect();
    let mut seen_dirs = HashSet::new();
    for &(key, path) in &paths {
        for dir in path
            .ancestors()
            .skip(1)
            .filter(|d| !d.as_os_str().is_empty())
        {
            if !seen_dirs.insert(dir) {
                break;
            }
            if let Some(file) = files.get(dir) {
                return Err(KeyError::FileAndDir {
                    file: file.to_string(),
                    inside: key.to_string(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_keys_map_to_relative_paths() {
        assert_eq!(
            relative_path("p/a/b.txt", "a/b.txt"),
            Ok(Some("a/b.txt".into()))
        );
        assert_eq!(
            relative_path("p/é 日本/x y", "é 日本/x y"),
            Ok(Some("é 日本/x y".into()))
        );
        assert_eq!(
            relative_path("p/..hidden", "..hidden"),
            Ok(Some("..hidden".into()))
        );
        assert_eq!(relative_path("p/dir/", "dir/"), Ok(None));
        assert_eq!(relative_path("p/", ""), Ok(None));
    }

    #[test]
    fn hostile_keys_are_refused() {
        for rest in [
            "../etc/passwd",
            "a/../../x",
            "/etc/passwd",
            "a//b",
            "./a",
            "a/.",
            "a\nb",
            "a\u{0}b",
            "a\u{1b}[31m",
            &"x".repeat(256),
            &format!("{}/x", "a/".repeat(2100)),
            "//",
        ] {
            assert!(relative_path(rest, rest).is_err(), "{rest:?} accepted");
        }
    }

    #[test]
    fn a_key_cannot_be_file_and_dir() {
        let ok = [
            ("k/a".to_string(), PathBuf::from("a")),
            ("k/b/c".into(), "b/c".into()),
        ];
        let pairs =
            |v: &'static [(String, PathBuf)]| v.iter().map(|(k, p)| (k.as_str(), p.as_path()));
        let ok: &'static [(String, PathBuf)] = Box::leak(Box::new(ok));
        assert_eq!(check_no_file_dir_conflict(pairs(ok)), Ok(()));
        let bad = [
            ("k/a/b/c".to_string(), PathBuf::from("a/b/c")),
            ("k/a".into(), "a".into()),
        ];
        let bad: &'static [(String, PathBuf)] = Box::leak(Box::new(bad));
        assert_eq!(
            check_no_file_dir_conflict(pairs(bad)),
            Err(KeyError::FileAndDir {
                file: "k/a".into(),
                inside: "k/a/b/c".into()
            })
        );
    }
}
