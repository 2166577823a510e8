//! What one tar entry may do, decided from its header alone and what the entries before
//! it made: written (a file, a directory), linked (a symlink, made last), or refused and
//! why. Pure, so every rule has a row in its table test; the caps on names and room and
//! the file system's answers are the unpacker's (`super::Unpacker::admit`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use super::{MAX_DEPTH, MAX_NAME};

/// What an entry makes.
#[derive(PartialEq, Eq)]
pub(super) enum Is {
    File,
    Dir,
    Link,
}

/// One entry as its header and the extension records before it give it.
pub(super) struct Entry<'a> {
    /// The header's type flag.
    pub(super) kind: u8,
    pub(super) name: &'a str,
    /// The link target (a symlink's), if any.
    pub(super) link: Option<&'a [u8]>,
    pub(super) size: u64,
}

/// What the entries before this one made, as far as a [`verdict`] depends on it.
pub(super) struct Seen<'a> {
    pub(super) links: &'a BTreeMap<PathBuf, PathBuf>,
    pub(super) dirs: &'a BTreeSet<PathBuf>,
    /// Bytes of file content so far, and the cap on them.
    pub(super) bytes: u64,
    pub(super) max_bytes: u64,
}

/// What to do with one entry.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// The destination itself (`./`), a directory already: nothing to make.
    Root,
    Dir(PathBuf),
    /// A regular file: its data follows the header.
    File(PathBuf),
    /// A symlink and its target, made once every entry is read.
    Link(PathBuf, String),
    /// Why the entry is refused.
    Refused(String),
}

pub(super) const TWICE: &str = "the name appears twice in the archive";

/// The one decision per entry kind, by the entry's type, name, size and link target and
/// what the entries before it made; the caps on names and room, and the file system's
/// answers, are [`super::Unpacker::admit`]'s. Rules in order: the type (only files,
/// directories and symlinks), no size but a file's, a plain relative name ([`clean`]),
/// nothing below a symlink of the archive, no name twice, a symlink's target inside the
/// tree as far as its text tells (the rest is [`super::escapes`]), a file within `max_bytes`.
pub(super) fn verdict(entry: &Entry<'_>, seen: &Seen<'_>) -> Verdict {
    let refuse = |why: &str| Verdict::Refused(why.to_string());
    let slash = entry.name.ends_with('/');
    let is = match entry.kind {
        // tarfile reads a file named `dir/`, GNU tar and the `tar` crate a directory.
        b'0' | b'7' if slash => return refuse("it is a regular file, but its name ends in '/'"),
        b'0' | b'7' => Is::File,
        // The old (v7) type: a directory when its name ends in '/', as all read it.
        0 if slash => Is::Dir,
        0 => Is::File,
        b'5' => Is::Dir,
        b'2' => Is::Link,
        b'1' => return refuse("hard links are not unpacked"),
        b'3' | b'4' | b'6' => return refuse("device nodes and FIFOs are not unpacked"),
        b'S' => return refuse("sparse files are not unpacked"),
        _ => return refuse("only files, directories and symlinks are unpacked"),
    };
    // GNU tar and tarfile read no data after a directory's header, whatever its size,
    // and tarfile none after a symlink's either; the `tar` crate skips that many bytes.
    if is != Is::File && entry.size != 0 {
        let what = match is {
            Is::Dir => "directory",
            _ => "symlink",
        };
        return Verdict::Refused(format!(
            "its header gives this {what} a size of {} bytes: tar readers disagree on whether data follows it",
            entry.size
        ));
    }
    let rel = match clean(entry.name) {
        Err(why) => return Verdict::Refused(why),
        Ok(None) if is == Is::Dir => return Verdict::Root,
        Ok(None) => return refuse("it names the destination itself"),
        Ok(Some(rel)) => rel,
    };
    if let Some(link) = rel
        .ancestors()
        .skip(1)
        .find(|a| seen.links.contains_key(*a))
    {
        return Verdict::Refused(format!(
            "it would be written through the symlink {:?}",
            link.display().to_string()
        ));
    }
    if seen.links.contains_key(&rel) {
        return refuse(TWICE);
    }
    match is {
        Is::Dir => Verdict::Dir(rel),
        Is::Link => {
            let Ok(target) = std::str::from_utf8(entry.link.unwrap_or_default()) else {
                return refuse("its symlink target is not UTF-8");
            };
            if target.is_empty() || target.starts_with('/') {
                return Verdict::Refused(format!(
                    "its symlink target {target:?} leads outside the destination"
                ));
            }
            if target.len() > MAX_NAME || target.split('/').count() > 2 * MAX_DEPTH {
                return refuse("its symlink target is too long");
            }
            if seen.dirs.contains(&rel) {
                return refuse(TWICE);
            }
            Verdict::Link(rel, target.to_string())
        }
        Is::File if seen.bytes.saturating_add(entry.size) > seen.max_bytes => {
            Verdict::Refused(format!(
                "the archive unpacks to more than {} bytes (max_bytes)",
                seen.max_bytes
            ))
        }
        Is::File => Verdict::File(rel),
    }
}
/// An entry's name as a relative path: `./` prefixes dropped; `None` for the root itself.
pub(super) fn clean(name: &str) -> Result<Option<PathBuf>, String> {
    if name.starts_with('/') {
        return Err("it is an absolute path".into());
    }
    let mut rest = name.trim_end_matches('/');
    while let Some(r) = rest.strip_prefix("./") {
        rest = r.trim_start_matches('/');
    }
    if rest.is_empty() || rest == "." {
        return Ok(None);
    }
    if rest.len() > MAX_NAME || rest.split('/').count() > MAX_DEPTH {
        return Err(format!(
            "its name is longer than {MAX_NAME} bytes or deeper than {MAX_DEPTH}"
        ));
    }
    for segment in rest.split('/') {
        let why = match segment {
            "" => "it has an empty path segment",
            "." | ".." => "it has a '.' or '..' segment",
            s if s.len() > 255 => "a path segment is longer than 255 bytes",
            s if s.chars().any(char::is_control) => "it contains a control character",
            _ => continue,
        };
        return Err(why.into());
    }
    Ok(Some(PathBuf::from(rest)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::archive::tape::is_extension;

    #[test]
    fn names_are_plain_relative_paths() {
        assert_eq!(clean("./").unwrap(), None);
        assert_eq!(clean(".").unwrap(), None);
        assert_eq!(clean("./a/b/").unwrap(), Some(PathBuf::from("a/b")));
        assert_eq!(clean("a/b.txt").unwrap(), Some(PathBuf::from("a/b.txt")));
        assert_eq!(clean("..hidden").unwrap(), Some(PathBuf::from("..hidden")));
        for bad in ["/etc/passwd", "../x", "a/../../x", "a//b", "a/./b", "a\nb"] {
            assert!(clean(bad).is_err(), "{bad:?}");
        }
    }

    /// Every entry kind and rule of [`verdict`], in its order, with the exact refusal.
    #[test]
    fn each_entry_kind_has_one_verdict() {
        use Verdict::{Dir, File, Link, Refused, Root};
        let links: BTreeMap<PathBuf, PathBuf> = [("l", "x"), ("d/l2", "y")]
            .into_iter()
            .map(|(l, t)| (PathBuf::from(l), PathBuf::from(t)))
            .collect();
        let dirs: BTreeSet<PathBuf> = ["d", "dir"].into_iter().map(PathBuf::from).collect();
        let seen = Seen {
            links: &links,
            dirs: &dirs,
            bytes: 90,
            max_bytes: 100,
        };
        let p = PathBuf::from;
        let no = |why: &str| Refused(why.to_string());
        let long_segment = "x".repeat(256);
        let long_name = ["y"; 2048].join("/");
        let deep_name = ["y"; 129].join("/");
        let long_target = "t".repeat(4096);
        let deep_target = ["t"; 257].join("/");
        let devices = "device nodes and FIFOs are not unpacked";
        let others = "only files, directories and symlinks are unpacked";
        let too_long = "its name is longer than 4095 bytes or deeper than 128";
        /// Type flag, name, size, link target, verdict.
        type Case<'a> = (u8, &'a str, u64, Option<&'a [u8]>, Verdict);
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            // Regular files: '0', '7' (contiguous), and the old NUL type.
            (b'0', "a.txt", 10, None, File(p("a.txt"))),
            (b'7', "c.bin", 0, None, File(p("c.bin"))),
            (0, "old", 3, None, File(p("old"))),
            (b'0', "./a/b", 0, None, File(p("a/b"))),
            (b'0', ".//./a", 0, None, File(p("a"))),
            (b'0', "..hidden", 0, None, File(p("..hidden"))),
            (b'0', "dir/", 0, None, no("it is a regular file, but its name ends in '/'")),
            (b'7', "dir/", 0, None, no("it is a regular file, but its name ends in '/'")),
            // Directories: '5', and the old type with a trailing '/'.
            (b'5', "e", 0, None, Dir(p("e"))),
            (b'5', "d/e/", 0, None, Dir(p("d/e"))),
            (0, "olddir/", 0, None, Dir(p("olddir"))),
            (b'5', "./", 0, None, Root),
            (b'5', ".", 0, None, Root),
            (0, "./", 0, None, Root),
            (b'5', "e", 512, None, no("its header gives this directory a size of 512 bytes: tar readers disagree on whether data follows it")),
            // Symlinks: '2'.
            (b'2', "s", 0, Some(b"a/b"), Link(p("s"), "a/b".into())),
            (b'2', "s", 0, Some(b"../up"), Link(p("s"), "../up".into())),
            (b'2', "s", 1, Some(b"a"), no("its header gives this symlink a size of 1 bytes: tar readers disagree on whether data follows it")),
            (b'2', "s", 0, Some(b"/etc/passwd"), no("its symlink target \"/etc/passwd\" leads outside the destination")),
            (b'2', "s", 0, Some(b""), no("its symlink target \"\" leads outside the destination")),
            (b'2', "s", 0, None, no("its symlink target \"\" leads outside the destination")),
            (b'2', "s", 0, Some(b"\xff"), no("its symlink target is not UTF-8")),
            (b'2', "s", 0, Some(long_target.as_bytes()), no("its symlink target is too long")),
            (b'2', "s", 0, Some(deep_target.as_bytes()), no("its symlink target is too long")),
            (b'2', ".", 0, Some(b"a"), no("it names the destination itself")),
            (b'2', "dir", 0, Some(b"a"), no(TWICE)),
            // Every other type is refused, whatever its name.
            (b'1', "h", 0, Some(b"a.txt"), no("hard links are not unpacked")),
            (b'3', "tty", 0, None, no(devices)),
            (b'4', "sda", 0, None, no(devices)),
            (b'6', "fifo", 0, None, no(devices)),
            (b'S', "sparse", 0, None, no("sparse files are not unpacked")),
            (b'1', "/abs", 0, None, no("hard links are not unpacked")),
            (b'D', "dump", 0, None, no(others)),
            (b'M', "multi", 0, None, no(others)),
            (b'V', "volume", 0, None, no(others)),
            (b'N', "oldlong", 0, None, no(others)),
            (b'A', "vendor", 0, None, no(others)),
            // Names: plain relative paths.
            (b'0', ".", 0, None, no("it names the destination itself")),
            (b'0', "/etc/passwd", 0, None, no("it is an absolute path")),
            (b'5', "/", 0, None, no("it is an absolute path")),
            (b'0', "../x", 0, None, no("it has a '.' or '..' segment")),
            (b'0', "a/../../x", 0, None, no("it has a '.' or '..' segment")),
            (b'0', "a/./b", 0, None, no("it has a '.' or '..' segment")),
            (b'0', "a//b", 0, None, no("it has an empty path segment")),
            (b'0', "a\nb", 0, None, no("it contains a control character")),
            (b'0', &long_segment, 0, None, no("a path segment is longer than 255 bytes")),
            (b'0', &long_name, 0, None, no(too_long)),
            (b'5', &deep_name, 0, None, no(too_long)),
            // Nothing below a symlink of the archive; no name twice.
            (b'0', "l/x", 0, None, no("it would be written through the symlink \"l\"")),
            (b'5', "d/l2/e/f", 0, None, no("it would be written through the symlink \"d/l2\"")),
            (b'2', "l/s", 0, Some(b"/abs"), no("it would be written through the symlink \"l\"")),
            (b'0', "l", 0, None, no(TWICE)),
            (b'5', "d/l2", 0, None, no(TWICE)),
            (b'2', "l", 0, Some(b"x"), no(TWICE)),
            // A directory made before, or a file, is no refusal here: `make_dirs` and
            // the file system decide (a directory named twice is one directory).
            (b'5', "d", 0, None, Dir(p("d"))),
            (b'0', "d/f", 0, None, File(p("d/f"))),
            // max_bytes: 90 written so far, 100 allowed.
            (b'0', "fits", 10, None, File(p("fits"))),
            (b'0', "big", 11, None, no("the archive unpacks to more than 100 bytes (max_bytes)")),
            (0, "big", u64::MAX, None, no("the archive unpacks to more than 100 bytes (max_bytes)")),
        ];
        for (kind, name, size, link, expected) in cases {
            let entry = Entry {
                kind,
                name,
                link,
                size,
            };
            let shown: String = name.chars().take(40).collect();
            assert_eq!(
                verdict(&entry, &seen),
                expected,
                "{:?} {shown:?}",
                kind as char
            );
        }
        for kind in [b'L', b'K', b'x', b'g'] {
            assert!(is_extension(kind));
        }
        for kind in [0, b'0', b'1', b'2', b'5', b'S', b'X', b'G'] {
            assert!(!is_extension(kind));
        }
    }
}
