//! Unpacking one archive (`.tar`, `.tar.gz`/`.tgz`, `.tar.zst`) into a staging tree, as
//! untrusted input: tar extraction has a long CVE history, and every one of them is an
//! entry that writes somewhere it should not.
//!
//! The rules, each refusal naming the entry (exit 65, nothing swapped in):
//! - names are plain relative paths (`./` prefixes dropped): no absolute path, no `..`,
//!   no empty segment, no control character, UTF-8;
//! - only files, directories and symlinks: a hard link, a device node, a FIFO, a socket or
//!   a sparse file is refused; a name that appears twice is refused;
//! - nothing is written through a symlink: an entry below a symlink of the archive is
//!   refused, and every step is relative to directory descriptors (`fsat.rs`);
//! - a symlink must resolve inside the tree, following the archive's other symlinks as
//!   the kernel would once all of them exist: no absolute target, no `..` past the root,
//!   no loop. Symlinks are created last;
//! - owners, setuid/setgid/sticky bits and xattrs of the archive are ignored: files get
//!   the entry's `file_mode` (with the executable bits added where the archive had any
//!   executable bit), directories its `dir_mode`;
//! - at most `max_entries` entries and `max_bytes` bytes of file content, and never more
//!   than the file system's room (less 1 % kept free), each checked from the entry's
//!   header before a byte of it is written: a decompression bomb fails at its first
//!   oversized entry, without filling the disk.
//!
//! Decompression is streamed (memory stays bounded: gzip's window is 32 KiB, zstd's is
//! capped at the library's default 128 MiB), and runs on a blocking thread fed by the
//! download as it arrives.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::sync::tree::{Staging, TreeError};

/// The compression of an archive, from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Tar,
    Gzip,
    Zstd,
}

impl Format {
    /// The format a name ends in, if it names an archive.
    pub fn of(name: &str) -> Option<Format> {
        if name.ends_with(".tar") {
            Some(Format::Tar)
        } else if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
            Some(Format::Gzip)
        } else if name.ends_with(".tar.zst") {
            Some(Format::Zstd)
        } else {
            None
        }
    }

    fn name(self) -> &'static str {
        match self {
            Format::Tar => "tar",
            Format::Gzip => "tar.gz",
            Format::Zstd => "tar.zst",
        }
    }
}

pub const DEFAULT_MAX_ENTRIES: u64 = 1_000_000;
pub const DEFAULT_MAX_BYTES: u64 = 8 << 30;

/// How much one archive may unpack to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_entries: u64,
    pub max_bytes: u64,
}

/// What an archive unpacked to, for `Staging::finish` and the manifest.
#[derive(Debug, Default)]
pub struct Unpacked {
    /// Regular files, and whether the archive marked each executable.
    pub files: Vec<(PathBuf, u64, bool)>,
    pub dirs: BTreeSet<PathBuf>,
    pub links: Vec<PathBuf>,
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("archive entry {entry:?} refused: {why}")]
    Refused { entry: String, why: String },
    #[error("the archive is not a readable {format} archive: {why}")]
    Malformed { format: &'static str, why: String },
    #[error(transparent)]
    Tree(#[from] TreeError),
}

fn refused(entry: &str, why: impl Into<String>) -> UnpackError {
    UnpackError::Refused {
        entry: entry.to_string(),
        why: why.into(),
    }
}

/// A name or a set of PAX records in one extension entry: at most this many bytes.
const MAX_EXTENSION: u64 = 64 * 1024;
/// An entry's name or a symlink's target: at most this many bytes (PATH_MAX less one)…
const MAX_NAME: usize = 4095;
/// …and this many directories deep (a removal holds one descriptor per level).
const MAX_DEPTH: usize = 128;
/// The names kept in memory for the whole archive, together.
const MAX_NAME_BYTES: usize = 256 << 20;
/// Steps spent resolving every symlink of the archive, together.
const MAX_RESOLVE_STEPS: u64 = 50_000_000;

/// Unpacks `input` (the archive's bytes as they arrive) into `staging`. Blocking; stops
/// with an error soon after `cancel` is set (the pass was dropped: a deadline, SIGTERM).
///
/// Entries are read raw: the `tar` crate would read a GNU long name or a PAX record set
/// of any size into memory before returning the entry it describes, so those are read
/// here, each at most [`MAX_EXTENSION`] bytes. A PAX `size` that disagrees with its
/// entry's header is refused (parsers that disagree on sizes see different archives).
pub fn unpack(
    input: impl Read,
    format: Format,
    staging: &Staging,
    limits: Limits,
    cancel: &AtomicBool,
) -> Result<Unpacked, UnpackError> {
    let malformed = |e: io::Error| UnpackError::Malformed {
        format: format.name(),
        why: e.to_string(),
    };
    let reader: Box<dyn Read> = match format {
        Format::Tar => Box::new(input),
        Format::Gzip => Box::new(flate2::read::MultiGzDecoder::new(input)),
        Format::Zstd => Box::new(zstd::stream::read::Decoder::new(input).map_err(malformed)?),
    };
    let room = staging
        .room()
        .map_err(|e| io_error(staging, Path::new(""), e))?;
    let mut archive = tar::Archive::new(reader);
    let mut out = Unpacked::default();
    let mut links: BTreeMap<PathBuf, PathBuf> = BTreeMap::new();
    let mut files: std::collections::HashSet<PathBuf> = std::collections::HashSet::new();
    let (mut entries, mut charged, mut names) = (0u64, 0u64, 0usize);
    let mut buffer = vec![0u8; 256 * 1024];
    // What extension records say about the next entry: a GNU long name and long link
    // target, and a PAX record set.
    let mut long_name: Option<Vec<u8>> = None;
    let mut long_link: Option<Vec<u8>> = None;
    let mut pax: Option<Vec<u8>> = None;
    for entry in archive.entries().map_err(malformed)?.raw(true) {
        if cancel.load(Ordering::Relaxed) {
            return Err(cancelled());
        }
        let mut entry = entry.map_err(malformed)?;
        let kind = entry.header().entry_type();
        let extension = kind.is_gnu_longname()
            || kind.is_gnu_longlink()
            || kind.is_pax_local_extensions()
            || kind.is_pax_global_extensions();
        if extension {
            let header_name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            if entry.size() > MAX_EXTENSION {
                let why = format!(
                    "its extension record holds {} bytes, more than {MAX_EXTENSION}",
                    entry.size()
                );
                return Err(refused(&header_name, why));
            }
            let mut data = Vec::with_capacity(entry.size() as usize);
            entry.read_to_end(&mut data).map_err(malformed)?;
            let slot = match () {
                _ if kind.is_gnu_longname() => &mut long_name,
                _ if kind.is_gnu_longlink() => &mut long_link,
                _ if kind.is_pax_local_extensions() => &mut pax,
                _ => continue, // global PAX records: nothing bootstage uses
            };
            if slot.replace(data).is_some() {
                return Err(refused(
                    &header_name,
                    "two extension records describe one entry",
                ));
            }
            continue;
        }
        let mut name_bytes = long_name
            .take()
            .unwrap_or_else(|| entry.path_bytes().into_owned());
        let mut link_bytes = long_link
            .take()
            .or_else(|| entry.link_name_bytes().map(|l| l.into_owned()));
        for bytes in [Some(&mut name_bytes), link_bytes.as_mut()]
            .into_iter()
            .flatten()
        {
            while bytes.last() == Some(&0) {
                bytes.pop();
            }
        }
        if let Some(records) = pax.take() {
            for record in tar::PaxExtensions::new(&records) {
                let record = record.map_err(malformed)?;
                match record.key_bytes() {
                    b"path" => name_bytes = record.value_bytes().to_vec(),
                    b"linkpath" => link_bytes = Some(record.value_bytes().to_vec()),
                    b"size"
                        if record.value().ok().and_then(|v| v.parse().ok())
                            != Some(entry.size()) =>
                    {
                        let name = String::from_utf8_lossy(&name_bytes).into_owned();
                        return Err(refused(&name, "its PAX size disagrees with its header"));
                    }
                    key if key.starts_with(b"GNU.sparse") => {
                        let name = String::from_utf8_lossy(&name_bytes).into_owned();
                        return Err(refused(&name, "sparse files are not unpacked"));
                    }
                    _ => {}
                }
            }
        }
        let name = String::from_utf8_lossy(&name_bytes).into_owned();
        entries += 1;
        if entries > limits.max_entries {
            let why = format!(
                "the archive has more than {} entries (max_entries)",
                limits.max_entries
            );
            return Err(refused(&name, why));
        }
        if entries > room.inodes {
            let why = format!(
                "unpacking it would leave the file system of {} with less than 1 % of its inodes free",
                staging.path().display()
            );
            return Err(refused(&name, why));
        }
        if std::str::from_utf8(&name_bytes).is_err() {
            return Err(refused(&name, "its name is not UTF-8"));
        }
        let Some(rel) = clean(&name)? else { continue };
        names += name.len();
        if names > MAX_NAME_BYTES {
            return Err(refused(&name, "the archive's names take more than 256 MiB"));
        }
        if let Some(link) = rel.ancestors().skip(1).find(|a| links.contains_key(*a)) {
            let why = format!(
                "it would be written through the symlink {:?}",
                link.display().to_string()
            );
            return Err(refused(&name, why));
        }
        if links.contains_key(&rel) || files.contains(&rel) {
            return Err(refused(&name, "the name appears twice in the archive"));
        }
        // What the entry costs the file system: an inode's block, and its content's blocks.
        let size = match kind.is_file() || kind.is_contiguous() {
            true => entry.size(),
            false => 0,
        };
        charged = charged
            .saturating_add(room.block)
            .saturating_add(size.div_ceil(room.block).saturating_mul(room.block));
        if charged > room.bytes {
            let why = format!(
                "unpacking it would leave the file system of {} with less than 1 % free",
                staging.path().display()
            );
            return Err(refused(&name, why));
        }
        let is_dir = kind.is_dir() || (kind.is_file() && name.ends_with('/'));
        if is_dir {
            make_dirs(staging, &rel, true, &mut out.dirs, &name)?;
            continue;
        }
        if kind.is_hard_link() {
            return Err(refused(&name, "hard links are not unpacked"));
        }
        if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            return Err(refused(&name, "device nodes and FIFOs are not unpacked"));
        }
        if kind.is_gnu_sparse() {
            return Err(refused(&name, "sparse files are not unpacked"));
        }
        if kind.is_symlink() {
            let target = link_bytes.unwrap_or_default();
            let target = std::str::from_utf8(&target)
                .map_err(|_| refused(&name, "its symlink target is not UTF-8"))?;
            if target.is_empty() || target.starts_with('/') {
                let why = format!("its symlink target {target:?} leads outside the destination");
                return Err(refused(&name, why));
            }
            if target.len() > MAX_NAME || target.split('/').count() > 2 * MAX_DEPTH {
                return Err(refused(&name, "its symlink target is too long"));
            }
            if out.dirs.contains(&rel) {
                return Err(refused(&name, "the name appears twice in the archive"));
            }
            names += target.len();
            make_dirs(staging, &rel, false, &mut out.dirs, &name)?;
            links.insert(rel, PathBuf::from(target));
            continue;
        }
        if !(kind.is_file() || kind.is_contiguous()) {
            return Err(refused(
                &name,
                "only files, directories and symlinks are unpacked",
            ));
        }
        if out.bytes.saturating_add(size) > limits.max_bytes {
            let why = format!(
                "the archive unpacks to more than {} bytes (max_bytes)",
                limits.max_bytes
            );
            return Err(refused(&name, why));
        }
        make_dirs(staging, &rel, false, &mut out.dirs, &name)?;
        let mut file = staging.create(&rel).map_err(|e| match e {
            TreeError::Io { ref source, .. } if source.kind() == io::ErrorKind::AlreadyExists => {
                refused(&name, "the name appears twice in the archive")
            }
            other => UnpackError::Tree(other),
        })?;
        let mut written = 0u64;
        loop {
            let n = entry.read(&mut buffer).map_err(malformed)?;
            if n == 0 {
                break;
            }
            file.write_all(&buffer[..n])
                .map_err(|e| io_error(staging, &rel, e))?;
            written += n as u64;
        }
        if written != size {
            let why = format!("{name}: {written} of its {size} bytes");
            return Err(malformed(io::Error::new(io::ErrorKind::UnexpectedEof, why)));
        }
        out.bytes += size;
        files.insert(rel.clone());
        let executable = entry.header().mode().unwrap_or(0) & 0o111 != 0;
        out.files.push((rel, size, executable));
    }
    // Past the end marker: up to 1 MiB more (a tar's padding) is read through the
    // decompressor, so that its own check (gzip's CRC, zstd's checksum) is verified.
    let mut rest = archive.into_inner().take(1 << 20);
    io::copy(&mut rest, &mut io::sink()).map_err(malformed)?;
    // Every symlink is judged against the whole tree, then made.
    let mut steps = 0u64;
    for (rel, target) in &links {
        if cancel.load(Ordering::Relaxed) {
            return Err(cancelled());
        }
        if let Some(why) = escapes(rel, target, &links, &mut steps) {
            let why = format!(
                "its symlink target {:?} {why}",
                target.display().to_string()
            );
            return Err(refused(&rel.to_string_lossy(), why));
        }
        staging
            .symlink(rel, target)
            .map_err(|e| io_error(staging, rel, e))?;
        out.links.push(rel.clone());
    }
    Ok(out)
}

fn cancelled() -> UnpackError {
    UnpackError::Tree(TreeError::Io {
        path: PathBuf::from("(staging)"),
        source: io::Error::new(io::ErrorKind::Interrupted, "the pass was stopped"),
    })
}

/// The mode a file gets: the entry's `file_mode`, plus an executable bit wherever it
/// gives a read bit, if the archive marked the file executable (as `chmod +X` would).
pub fn file_mode(file_mode: u32, executable: bool) -> u32 {
    match executable {
        true => file_mode | ((file_mode & 0o444) >> 2),
        false => file_mode,
    }
}

/// An entry's name as a relative path: `./` prefixes dropped; `None` for the root itself.
fn clean(name: &str) -> Result<Option<PathBuf>, UnpackError> {
    if name.starts_with('/') {
        return Err(refused(name, "it is an absolute path"));
    }
    let mut rest = name.trim_end_matches('/');
    while let Some(r) = rest.strip_prefix("./") {
        rest = r.trim_start_matches('/');
    }
    if rest.is_empty() || rest == "." {
        return Ok(None);
    }
    if rest.len() > MAX_NAME || rest.split('/').count() > MAX_DEPTH {
        let why = format!("its name is longer than {MAX_NAME} bytes or deeper than {MAX_DEPTH}");
        return Err(refused(name, why));
    }
    for segment in rest.split('/') {
        let why = match segment {
            "" => "it has an empty path segment",
            "." | ".." => "it has a '.' or '..' segment",
            s if s.len() > 255 => "a path segment is longer than 255 bytes",
            s if s.chars().any(char::is_control) => "it contains a control character",
            _ => continue,
        };
        return Err(refused(name, why));
    }
    Ok(Some(PathBuf::from(rest)))
}

/// Creates `rel`'s missing parent directories (and `rel` itself with `itself`).
fn make_dirs(
    staging: &Staging,
    rel: &Path,
    itself: bool,
    dirs: &mut BTreeSet<PathBuf>,
    name: &str,
) -> Result<(), UnpackError> {
    let mut wanted: Vec<&Path> = rel
        .ancestors()
        .skip(if itself { 0 } else { 1 })
        .filter(|d| !d.as_os_str().is_empty())
        .collect();
    wanted.reverse();
    for dir in wanted {
        if dirs.contains(dir) {
            continue;
        }
        match staging.make_dir(dir) {
            Ok(()) => {
                dirs.insert(dir.to_path_buf());
            }
            Err(e)
                if e.kind() == io::ErrorKind::AlreadyExists
                    || e.raw_os_error() == Some(nix::libc::ENOTDIR) =>
            {
                let why = format!(
                    "{} is a file in the archive, not a directory",
                    dir.display()
                );
                return Err(refused(name, why));
            }
            Err(e) => return Err(io_error(staging, dir, e)),
        }
    }
    Ok(())
}

fn io_error(staging: &Staging, rel: &Path, source: io::Error) -> UnpackError {
    UnpackError::Tree(TreeError::Io {
        path: staging.path().join(rel),
        source,
    })
}

/// Why the symlink `link` → `target` leads out of the tree, if it does, resolving as the
/// kernel will once every symlink of the archive exists: component by component, each
/// symlink met replaced by its target, `..` from the root leaving the tree.
fn escapes(
    link: &Path,
    target: &Path,
    links: &BTreeMap<PathBuf, PathBuf>,
    steps: &mut u64,
) -> Option<&'static str> {
    let mut at: Vec<OsString> = link
        .parent()
        .into_iter()
        .flat_map(Path::components)
        .map(|c| c.as_os_str().to_os_string())
        .collect();
    const OUTSIDE: Option<&str> = Some("leads outside the destination");
    let Some(mut todo) = components(target) else {
        return OUTSIDE;
    };
    todo.reverse();
    let mut hops = 0;
    while let Some(part) = todo.pop() {
        *steps += at.len() as u64 + 1;
        if *steps > MAX_RESOLVE_STEPS {
            return Some("takes too long to resolve with the archive's other symlinks");
        }
        if part == ".." {
            if at.pop().is_none() {
                return OUTSIDE;
            }
            continue;
        }
        at.push(part);
        let here: PathBuf = at.iter().collect();
        if let Some(next) = links.get(&here) {
            hops += 1;
            if hops > 40 {
                return Some("is a loop of symlinks");
            }
            at.pop();
            let Some(mut more) = components(next) else {
                return OUTSIDE;
            };
            more.reverse();
            todo.extend(more);
        }
    }
    None
}

/// A target's components, `.` dropped; `None` for an absolute one (refused earlier).
fn components(target: &Path) -> Option<Vec<OsString>> {
    let mut out = Vec::new();
    for c in target.components() {
        match c {
            Component::Normal(n) => out.push(n.to_os_string()),
            Component::ParentDir => out.push("..".into()),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn symlinks_are_resolved_as_the_kernel_will() {
        let links: BTreeMap<PathBuf, PathBuf> = [
            ("deep/a/b/s", "../../../t"),
            ("loop1", "loop2"),
            ("loop2", "loop1"),
            ("d/up", ".."),
        ]
        .into_iter()
        .map(|(l, t)| (PathBuf::from(l), PathBuf::from(t)))
        .collect();
        let judge =
            |link: &str, target: &str| escapes(Path::new(link), Path::new(target), &links, &mut 0);
        assert_eq!(judge("bin/conf", "../etc/app.conf"), None);
        assert_eq!(judge("a", "b/c/../../d"), None);
        assert_eq!(judge("deep/a/b/l", "s/x"), None);
        assert_eq!(
            judge("deep/a/b/l", "s/../../../../x"),
            Some("leads outside the destination")
        );
        assert_eq!(judge("x", "d/up/.."), Some("leads outside the destination"));
        assert_eq!(judge("x", "d/up/y"), None);
        assert_eq!(judge("a", "../a"), Some("leads outside the destination"));
        assert_eq!(judge("x", "loop1"), Some("is a loop of symlinks"));
    }

    #[test]
    fn executables_keep_an_executable_bit_where_they_can_be_read() {
        assert_eq!(file_mode(0o644, true), 0o755);
        assert_eq!(file_mode(0o640, true), 0o750);
        assert_eq!(file_mode(0o600, true), 0o700);
        assert_eq!(file_mode(0o644, false), 0o644);
        assert_eq!(Format::of("a.tgz"), Some(Format::Gzip));
        assert_eq!(Format::of("a.tar.zst"), Some(Format::Zstd));
        assert_eq!(Format::of("a.zip"), None);
    }
}
