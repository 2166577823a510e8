//! Unpacking one archive (`.tar`, `.tar.gz`/`.tgz`, `.tar.zst`) into a staging tree, as
//! untrusted input: tar extraction has a long CVE history, and every one of them is an
//! entry that writes somewhere it should not.
//!
//! The rules, each refusal naming the entry (exit 65, nothing swapped in):
//! - the archive is the one GNU tar and Python's tarfile read: wherever they (or the `tar`
//!   crate) would read its bytes differently, it is refused. So only a regular file has
//!   data: a directory or symlink whose header gives a size is refused (GNU tar and
//!   tarfile read no data after a directory's header, tarfile none after a symlink's);
//!   a global PAX header may only carry a comment, owners or times (which bootstage
//!   ignores in every entry), any other key (`size`, `path`, `linkpath`…) is refused, as
//!   readers apply it to every entry after it; an entry named both by a GNU long name and
//!   a PAX path, a regular file whose name ends in `/`, a non-ustar header with a name
//!   prefix, malformed PAX records, and numeric fields in forms the readers parse
//!   differently are refused;
//! - the archive ends with an end-of-archive marker (a lone zero block counts, as GNU tar
//!   accepts it with a warning), and only zeros may follow it: the stream is read to its
//!   end through the decompressor, so every gzip member's CRC and zstd's frame checksum is
//!   checked. An archive that stops at an entry boundary is refused;
//! - names are plain relative paths (`./` prefixes dropped): no absolute path, no `..`,
//!   no empty segment, no control character, UTF-8, at most 4,095 bytes and 128 levels;
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
//!   than the file system's room (less 1 % kept free), counting an inode's block for each
//!   file, symlink and directory and what the generation's manifest and seal will take,
//!   each checked from the entry's header before a byte of it is written: a decompression
//!   bomb fails at its first oversized entry, without filling the disk;
//! - the names kept in memory (each path, each symlink target, each directory made, each
//!   kept once) at most [`MAX_NAME_BYTES`] together, an extension record at most 64 KiB.
//!
//! Decompression is streamed (memory stays bounded: gzip's window is 32 KiB, zstd's is
//! capped at the library's default 128 MiB), and runs on a blocking thread fed by the
//! download as it arrives.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::sync::tree::{Room, Staging, TreeError};

mod tape;
mod verdict;

use tape::{BLOCK, Extensions, Tape, checksum_matches, is_extension, number, zeros};
use verdict::{Entry, Seen, TWICE, Verdict, verdict};

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

/// An entry's name or a symlink's target: at most this many bytes (PATH_MAX, 4,096 with
/// its NUL)…
const MAX_NAME: usize = 4095;
/// …and this many directories deep (a removal holds one descriptor per level).
const MAX_DEPTH: usize = 128;
/// The names kept in memory for the whole archive, together, each kept once: every file's,
/// symlink's and directory's path (a directory made for another entry's name too) and
/// every symlink's target.
pub const MAX_NAME_BYTES: u64 = 48 << 20;
/// Steps spent resolving every symlink of the archive, together.
const MAX_RESOLVE_STEPS: u64 = 50_000_000;
/// What listing one path in the generation's manifest or in its seal costs on disk beyond
/// the path itself (`tree.rs` writes both as JSON): quotes, indentation, and a size or the
/// seal's four numbers. A file and a symlink are listed in both, a directory in the
/// manifest only.
const LISTED: u64 = 128;
/// The manifest's own fields (the source, the archive's version, the settings), at most.
const LISTING_HEAD: u64 = 8 * 1024;

/// Unpacks `input` (the archive's bytes as they arrive) into `staging`. Blocking; stops
/// with an error soon after `cancel` is set (the pass was dropped: a deadline, SIGTERM).
///
/// The tar stream is read here, block by block (`tar::Header` only decodes a header's
/// fields), so that every byte is accounted for: a GNU long name or a PAX record set is
/// read whole, at most [`MAX_EXTENSION`] bytes; only a regular file has data, as much as
/// its header says; the archive ends at its first zero block, and only zeros may follow it
/// to the end of the stream. Wherever GNU tar, Python's tarfile and the `tar` crate would
/// read the same bytes differently, the entry is refused.
pub fn unpack(
    input: impl Read,
    format: Format,
    staging: &Staging,
    limits: Limits,
    cancel: &AtomicBool,
) -> Result<Unpacked, UnpackError> {
    let reader: Box<dyn Read> = match format {
        Format::Tar => Box::new(input),
        Format::Gzip => Box::new(flate2::read::MultiGzDecoder::new(input)),
        Format::Zstd => Box::new(
            zstd::stream::read::Decoder::new(input)
                .map_err(|e| malformed(format, e.to_string()))?,
        ),
    };
    let room = staging
        .room()
        .map_err(|e| io_error(staging, Path::new(""), e))?;
    let mut tape = Tape {
        inner: reader,
        offset: 0,
    };
    let mut u = Unpacker {
        staging,
        format,
        limits,
        room,
        out: Unpacked::default(),
        links: BTreeMap::new(),
        entries: 0,
        // The manifest's and seal's own fields, and a block each rounding them up.
        charged: LISTING_HEAD + 2 * room.block,
        names: 0,
    };
    let mut buffer = vec![0u8; 256 * 1024];
    u.read_entries(&mut tape, &mut buffer, cancel)?;
    u.read_trailer(&mut tape, &mut buffer, cancel)?;
    u.make_links(cancel)?;
    let mut out = u.out;
    out.links = u.links.into_keys().collect();
    Ok(out)
}

fn malformed(format: Format, why: String) -> UnpackError {
    UnpackError::Malformed {
        format: format.name(),
        why,
    }
}

/// An unpacking in progress: what it made, and what it has spent.
struct Unpacker<'a> {
    staging: &'a Staging,
    format: Format,
    limits: Limits,
    room: Room,
    out: Unpacked,
    /// The archive's symlinks, made once every entry is read: path → target.
    links: BTreeMap<PathBuf, PathBuf>,
    entries: u64,
    /// Bytes the tree will take on the file system, with its manifest and seal.
    charged: u64,
    /// Bytes of names kept ([`MAX_NAME_BYTES`]).
    names: u64,
}

impl Unpacker<'_> {
    /// Reads the entries up to the end-of-archive marker, making each (a symlink is only
    /// recorded, for [`Unpacker::make_links`]).
    fn read_entries<R: Read>(
        &mut self,
        tape: &mut Tape<R>,
        buffer: &mut [u8],
        cancel: &AtomicBool,
    ) -> Result<(), UnpackError> {
        let format = self.format;
        let broken = |e: io::Error| malformed(format, e.to_string());
        let mut block = [0u8; BLOCK];
        let mut next = Extensions::default();
        let mut last: Option<String> = None;
        loop {
            if cancel.load(Ordering::Relaxed) {
                return Err(cancelled());
            }
            let at = tape.offset;
            let more = tape.fill(&mut block).map_err(broken)?;
            let ended = !more || zeros(&block);
            if let Some(record) = next.record.take().filter(|_| ended) {
                return Err(refused(
                    &record,
                    "it is an extension record with no entry after it",
                ));
            }
            if !more {
                let why = match last {
                    Some(name) => format!(
                        "it stops after the entry {name:?} without an end-of-archive marker"
                    ),
                    None => "it stops before any entry without an end-of-archive marker".into(),
                };
                return Err(malformed(format, why));
            }
            if ended {
                return Ok(());
            }
            let header = tar::Header::from_byte_slice(&block);
            let header_name = String::from_utf8_lossy(&header.path_bytes()).into_owned();
            if !checksum_matches(&block) {
                let why = format!(
                    "the header at byte {at} of the tar stream ({header_name:?}) does not match its checksum"
                );
                return Err(malformed(format, why));
            }
            let size = number(&block[124..136]).ok_or_else(|| {
                let why = format!("the header of {header_name:?} has no readable size");
                malformed(format, why)
            })?;
            let kind = block[156];
            if is_extension(kind) {
                next.read(kind, header_name, size, tape, format)?;
                continue;
            }
            let (name, link) = next.entry(header, &block, size)?;
            let mode = number(&block[100..108]).ok_or_else(|| {
                malformed(
                    format,
                    format!("the header of {name:?} has no readable mode"),
                )
            })?;
            let entry = Entry {
                kind,
                name: &name,
                link: link.as_deref(),
                size,
            };
            if let Some(rel) = self.admit(&entry)? {
                self.write_file(tape, buffer, &name, rel, size, mode, cancel)?;
            }
            last = Some(name);
        }
    }

    /// Past the end marker, to the end of the stream: zeros only (a tar's padding to its
    /// record size), read through the decompressor, so that every gzip member's CRC and
    /// zstd's frame checksum is checked.
    fn read_trailer<R: Read>(
        &self,
        tape: &mut Tape<R>,
        buffer: &mut [u8],
        cancel: &AtomicBool,
    ) -> Result<(), UnpackError> {
        loop {
            if cancel.load(Ordering::Relaxed) {
                return Err(cancelled());
            }
            let at = tape.offset;
            let n = tape
                .read(buffer)
                .map_err(|e| malformed(self.format, e.to_string()))?;
            if n == 0 {
                return Ok(());
            }
            if let Some(i) = buffer[..n].iter().position(|b| *b != 0) {
                let why = format!(
                    "it has data after its end-of-archive marker, at byte {} of the tar stream",
                    at + i as u64
                );
                return Err(malformed(self.format, why));
            }
        }
    }

    /// Judges every symlink against the whole tree, then makes it.
    fn make_links(&self, cancel: &AtomicBool) -> Result<(), UnpackError> {
        let mut steps = 0u64;
        for (rel, target) in &self.links {
            if cancel.load(Ordering::Relaxed) {
                return Err(cancelled());
            }
            if let Some(why) = escapes(rel, target, &self.links, &mut steps) {
                let why = format!(
                    "its symlink target {:?} {why}",
                    target.display().to_string()
                );
                return Err(refused(&rel.to_string_lossy(), why));
            }
            match self.staging.symlink(rel, target) {
                Ok(()) => {}
                // A file of the archive has its name (files are not kept in a set: one
                // copy of each name).
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    return Err(refused(&rel.to_string_lossy(), TWICE));
                }
                Err(e) => return Err(io_error(self.staging, rel, e)),
            }
        }
        Ok(())
    }

    /// Counts an entry against `max_entries` and the inodes free, judges it
    /// ([`verdict`]) and makes it, charging its name and the room it takes, unless it is
    /// a regular file: then the path to write its data at.
    fn admit(&mut self, entry: &Entry<'_>) -> Result<Option<PathBuf>, UnpackError> {
        let name = entry.name;
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            let why = format!(
                "the archive has more than {} entries (max_entries)",
                self.limits.max_entries
            );
            return Err(refused(name, why));
        }
        if self.entries > self.room.inodes {
            let why = format!(
                "unpacking it would leave the file system of {} with less than 1 % of its inodes free",
                self.staging.path().display()
            );
            return Err(refused(name, why));
        }
        let seen = Seen {
            links: &self.links,
            dirs: &self.out.dirs,
            bytes: self.out.bytes,
            max_bytes: self.limits.max_bytes,
        };
        match verdict(entry, &seen) {
            Verdict::Refused(why) => Err(refused(name, why)),
            Verdict::Root => Ok(None),
            Verdict::Dir(rel) => {
                self.make_dirs(&rel, true, name)?;
                Ok(None)
            }
            Verdict::Link(rel, target) => {
                self.keep(name, rel.as_os_str().len() + target.len())?;
                self.charge(name, self.room.block + 2 * listed(&rel))?;
                self.make_dirs(&rel, false, name)?;
                self.links.insert(rel, PathBuf::from(target));
                Ok(None)
            }
            Verdict::File(rel) => {
                self.keep(name, rel.as_os_str().len())?;
                let blocks = entry
                    .size
                    .div_ceil(self.room.block)
                    .saturating_mul(self.room.block);
                let cost = self
                    .room
                    .block
                    .saturating_add(blocks)
                    .saturating_add(2 * listed(&rel));
                self.charge(name, cost)?;
                self.make_dirs(&rel, false, name)?;
                Ok(Some(rel))
            }
        }
    }

    /// Writes a regular file's data, `size` bytes read from `tape`, at `rel`.
    #[allow(clippy::too_many_arguments)]
    fn write_file<R: Read>(
        &mut self,
        tape: &mut Tape<R>,
        buffer: &mut [u8],
        name: &str,
        rel: PathBuf,
        size: u64,
        mode: u64,
        cancel: &AtomicBool,
    ) -> Result<(), UnpackError> {
        let broken = |e: io::Error| malformed(self.format, e.to_string());
        let mut file = self.staging.create(&rel).map_err(|e| match e {
            TreeError::Io { ref source, .. } if source.kind() == io::ErrorKind::AlreadyExists => {
                refused(name, TWICE)
            }
            other => UnpackError::Tree(other),
        })?;
        let mut left = size;
        while left > 0 {
            if cancel.load(Ordering::Relaxed) {
                return Err(cancelled());
            }
            let want = left.min(buffer.len() as u64) as usize;
            let n = tape.read(&mut buffer[..want]).map_err(broken)?;
            if n == 0 {
                let why = format!("{name}: {} of its {size} bytes", size - left);
                return Err(malformed(self.format, why));
            }
            file.write_all(&buffer[..n])
                .map_err(|e| io_error(self.staging, &rel, e))?;
            left -= n as u64;
        }
        tape.padding(size).map_err(broken)?;
        self.out.bytes += size;
        self.out.files.push((rel, size, mode & 0o111 != 0));
        Ok(())
    }

    /// Counts `bytes` more of names kept in memory.
    fn keep(&mut self, name: &str, bytes: usize) -> Result<(), UnpackError> {
        self.names += bytes as u64;
        if self.names > MAX_NAME_BYTES {
            let why = format!(
                "the archive's names take more than {} MiB ({MAX_NAME_BYTES} bytes)",
                MAX_NAME_BYTES >> 20
            );
            return Err(refused(name, why));
        }
        Ok(())
    }

    /// Counts `bytes` more of the file system's room, before they are written.
    fn charge(&mut self, name: &str, bytes: u64) -> Result<(), UnpackError> {
        self.charged = self.charged.saturating_add(bytes);
        if self.charged > self.room.bytes {
            let why = format!(
                "unpacking it would leave the file system of {} with less than 1 % free",
                self.staging.path().display()
            );
            return Err(refused(name, why));
        }
        Ok(())
    }

    /// Creates `rel`'s missing parent directories (and `rel` itself with `itself`), each
    /// a name kept, an inode and a line of the manifest.
    fn make_dirs(&mut self, rel: &Path, itself: bool, name: &str) -> Result<(), UnpackError> {
        let mut wanted: Vec<&Path> = rel
            .ancestors()
            .skip(if itself { 0 } else { 1 })
            .filter(|d| !d.as_os_str().is_empty())
            .collect();
        wanted.reverse();
        for dir in wanted {
            if self.out.dirs.contains(dir) {
                continue;
            }
            self.keep(name, dir.as_os_str().len())?;
            self.charge(name, self.room.block + listed(dir))?;
            match self.staging.make_dir(dir) {
                Ok(()) => {
                    self.out.dirs.insert(dir.to_path_buf());
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
                Err(e) => return Err(io_error(self.staging, dir, e)),
            }
        }
        Ok(())
    }
}

/// The bytes `rel` takes in the manifest or the seal: JSON-escaped (control characters
/// are refused; `"` and `\` take two bytes), and [`LISTED`] around it.
fn listed(rel: &Path) -> u64 {
    let bytes = rel.as_os_str().as_encoded_bytes();
    let escaped = bytes.iter().filter(|b| matches!(b, b'"' | b'\\')).count();
    (bytes.len() + escaped) as u64 + LISTED
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
