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
/// Global PAX records (`g`) that change nothing bootstage writes: owners and times, which
/// it ignores in every entry, and a comment (`git archive` puts the commit there). Any
/// other global record (`size`, `path`, `linkpath`, `hdrcharset`…) is refused: other tar
/// readers apply it to every entry after it.
const GLOBAL_KEYS: &[&[u8]] = &[
    b"comment", b"mtime", b"atime", b"ctime", b"uid", b"gid", b"uname", b"gname",
];
const BLOCK: usize = 512;

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

fn zeros(block: &[u8]) -> bool {
    block.iter().all(|b| *b == 0)
}

/// Whether a header's checksum field is the sum of its bytes, the field itself counted as
/// spaces (the unsigned sum, the one the `tar` crate accepts).
fn checksum_matches(block: &[u8; BLOCK]) -> bool {
    let sum: u64 = block[..148]
        .iter()
        .chain(&[b' '; 8])
        .chain(&block[156..])
        .map(|b| u64::from(*b))
        .sum();
    number(&block[148..156]) == Some(sum)
}

/// A numeric header field, read only in the forms GNU tar, tarfile and the `tar` crate
/// all read alike: octal digits with spaces around them, ended by a NUL or the field's
/// end; or base-256, its first byte exactly 0x80, its value within 64 bits.
fn number(field: &[u8]) -> Option<u64> {
    if field.first() == Some(&0x80) {
        let (high, low) = field[1..].split_at(field.len().saturating_sub(9));
        if high.iter().any(|b| *b != 0) {
            return None;
        }
        return Some(low.iter().fold(0, |n, b| (n << 8) | u64::from(*b)));
    }
    let text = field.split(|b| *b == 0).next().unwrap_or_default();
    let start = text.iter().position(|b| *b != b' ')?;
    let end = text.iter().rposition(|b| *b != b' ')? + 1;
    text[start..end].iter().try_fold(0u64, |n, d| match d {
        b'0'..=b'7' => n.checked_mul(8)?.checked_add(u64::from(d - b'0')),
        _ => None,
    })
}

/// A PAX record: its key and its value.
type Record<'a> = (&'a [u8], &'a [u8]);

/// The records of a PAX extension (`"<length> <key>=<value>\n"`, the length counting the
/// whole record), read by their lengths as GNU tar and tarfile read them (a value may hold
/// a newline). Anything else (a length that does not end at a newline, a record without
/// `=`, bytes after the last record) is refused: readers differ on it.
fn pax_records(mut data: &[u8]) -> Result<Vec<Record<'_>>, &'static str> {
    const BAD: &str = "its PAX records are malformed";
    let mut out = Vec::new();
    while !data.is_empty() {
        let space = data.iter().position(|b| *b == b' ').ok_or(BAD)?;
        let digits = &data[..space];
        if digits.is_empty() || digits.len() > 6 || !digits.iter().all(u8::is_ascii_digit) {
            return Err(BAD);
        }
        let len = digits
            .iter()
            .fold(0usize, |n, d| n * 10 + usize::from(d - b'0'));
        if len <= space + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(BAD);
        }
        let record = &data[space + 1..len - 1];
        let eq = record
            .iter()
            .position(|b| *b == b'=')
            .filter(|eq| *eq > 0)
            .ok_or(BAD)?;
        out.push((&record[..eq], &record[eq + 1..]));
        data = &data[len..];
    }
    Ok(out)
}

/// Checks a global PAX record set: each of its keys must be one that changes nothing
/// bootstage writes ([`GLOBAL_KEYS`]).
fn global(data: &[u8]) -> Result<(), String> {
    for (key, _) in pax_records(data)? {
        if !GLOBAL_KEYS.contains(&key) {
            let key: String = String::from_utf8_lossy(key).chars().take(64).collect();
            return Err(format!(
                "it sets {key:?} for the entries after it, which bootstage does not apply"
            ));
        }
    }
    Ok(())
}

/// What extension records said about the next entry.
#[derive(Default)]
struct Extensions {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<Vec<u8>>,
    /// The name of the last extension record read: an entry must follow it.
    record: Option<String>,
}

impl Extensions {
    /// Reads an extension record's data (its header's type is `L`, `K`, `x` or `g`): a
    /// name, a link target or PAX records for the entry after it; a global PAX record set
    /// is only checked ([`global`]).
    fn read<R: Read>(
        &mut self,
        kind: u8,
        header_name: String,
        size: u64,
        tape: &mut Tape<R>,
        format: Format,
    ) -> Result<(), UnpackError> {
        let broken = |e: io::Error| malformed(format, e.to_string());
        if size > MAX_EXTENSION {
            let why = format!("its extension record holds {size} bytes, more than {MAX_EXTENSION}");
            return Err(refused(&header_name, why));
        }
        let mut data = vec![0u8; size as usize];
        tape.exact(&mut data).map_err(broken)?;
        tape.padding(size).map_err(broken)?;
        let slot = match kind {
            b'L' => &mut self.long_name,
            b'K' => &mut self.long_link,
            b'x' => &mut self.pax,
            _ => {
                global(&data).map_err(|why| refused(&header_name, why))?;
                self.record = Some(header_name);
                return Ok(());
            }
        };
        if slot.replace(data).is_some() {
            return Err(refused(
                &header_name,
                "two extension records describe one entry",
            ));
        }
        self.record = Some(header_name);
        Ok(())
    }

    /// The name and link target of the entry with this header, taking the extension
    /// records read for it: a GNU long name and long link, a PAX path and linkpath.
    fn entry(
        &mut self,
        header: &tar::Header,
        block: &[u8; BLOCK],
        size: u64,
    ) -> Result<(String, Option<Vec<u8>>), UnpackError> {
        let lossy = |n: &[u8]| String::from_utf8_lossy(n).into_owned();
        let long_name = self.long_name.take();
        let long_link = self.long_link.take();
        let (long_named, long_linked) = (long_name.is_some(), long_link.is_some());
        let mut named_by_header = !long_named;
        let mut name = long_name.unwrap_or_else(|| header.path_bytes().into_owned());
        let mut link = long_link.or_else(|| header.link_name_bytes().map(|l| l.into_owned()));
        for bytes in [Some(&mut name), link.as_mut()].into_iter().flatten() {
            while bytes.last() == Some(&0) {
                bytes.pop();
            }
        }
        if let Some(records) = self.pax.take() {
            for (key, value) in pax_records(&records).map_err(|why| refused(&lossy(&name), why))? {
                match key {
                    // tarfile keeps a long name read before the PAX path, GNU tar the path.
                    b"path" if long_named => {
                        let why = "both a GNU long name and a PAX path name it, and tar readers differ on which counts";
                        return Err(refused(&lossy(value), why));
                    }
                    b"path" => {
                        name = value.to_vec();
                        named_by_header = false;
                    }
                    b"linkpath" if long_linked => {
                        let why = "both a GNU long link and a PAX linkpath give its target, and tar readers differ on which counts";
                        return Err(refused(&lossy(&name), why));
                    }
                    b"linkpath" => link = Some(value.to_vec()),
                    b"size" => {
                        let pax = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
                        if pax != Some(size) {
                            let why = "its PAX size disagrees with its header";
                            return Err(refused(&lossy(&name), why));
                        }
                    }
                    key if key.starts_with(b"GNU.sparse") => {
                        return Err(refused(&lossy(&name), "sparse files are not unpacked"));
                    }
                    _ => {}
                }
            }
        }
        let name = String::from_utf8(name)
            .map_err(|e| refused(&lossy(e.as_bytes()), "its name is not UTF-8"))?;
        // tarfile prepends the ustar prefix field to a header's name whatever the header's
        // magic; GNU tar and the `tar` crate only in a ustar header.
        let ustar = &block[257..265] == b"ustar\x0000";
        if named_by_header && !ustar && block[345] != 0 {
            let why = "its header is not ustar but has bytes in the ustar name prefix, which some tar readers prepend to its name";
            return Err(refused(&name, why));
        }
        Ok((name, link))
    }
}

/// The stream of tar blocks, and how far into it reading is.
struct Tape<R> {
    inner: R,
    offset: u64,
}

impl<R: Read> Tape<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.inner.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
                Ok(n) => {
                    self.offset += n as u64;
                    return Ok(n);
                }
            }
        }
    }

    /// Fills `buf`; `false` when the stream ended before its first byte.
    fn fill(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        let mut n = 0;
        while n < buf.len() {
            match self.read(&mut buf[n..])? {
                0 if n == 0 => return Ok(false),
                0 => return Err(self.cut()),
                k => n += k,
            }
        }
        Ok(true)
    }

    fn exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        match self.fill(buf)? {
            true => Ok(()),
            false => Err(self.cut()),
        }
    }

    /// The padding after `size` bytes of data, up to the next block.
    fn padding(&mut self, size: u64) -> io::Result<()> {
        let pad = (BLOCK - (size % BLOCK as u64) as usize) % BLOCK;
        self.exact(&mut [0u8; BLOCK][..pad])
    }

    fn cut(&self) -> io::Error {
        let why = format!(
            "it stops in the middle of an entry, at byte {} of the tar stream",
            self.offset
        );
        io::Error::new(io::ErrorKind::UnexpectedEof, why)
    }
}

/// Whether a header's type is an extension record's (`L` GNU long name, `K` GNU long
/// link, `x` PAX, `g` global PAX): data that describes entries, read by
/// [`Extensions::read`]; every other type is an entry, judged by [`verdict`].
fn is_extension(kind: u8) -> bool {
    matches!(kind, b'L' | b'K' | b'x' | b'g')
}

/// What an entry makes.
#[derive(PartialEq, Eq)]
enum Is {
    File,
    Dir,
    Link,
}

/// One entry as its header and the extension records before it give it.
struct Entry<'a> {
    /// The header's type flag.
    kind: u8,
    name: &'a str,
    /// The link target (a symlink's), if any.
    link: Option<&'a [u8]>,
    size: u64,
}

/// What the entries before this one made, as far as a [`verdict`] depends on it.
struct Seen<'a> {
    links: &'a BTreeMap<PathBuf, PathBuf>,
    dirs: &'a BTreeSet<PathBuf>,
    /// Bytes of file content so far, and the cap on them.
    bytes: u64,
    max_bytes: u64,
}

/// What to do with one entry.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
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

const TWICE: &str = "the name appears twice in the archive";

/// The one decision per entry kind, by the entry's type, name, size and link target and
/// what the entries before it made; the caps on names and room, and the file system's
/// answers, are [`Unpacker::admit`]'s. Rules in order: the type (only files,
/// directories and symlinks), no size but a file's, a plain relative name ([`clean`]),
/// nothing below a symlink of the archive, no name twice, a symlink's target inside the
/// tree as far as its text tells (the rest is [`escapes`]), a file within `max_bytes`.
fn verdict(entry: &Entry<'_>, seen: &Seen<'_>) -> Verdict {
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

/// An entry's name as a relative path: `./` prefixes dropped; `None` for the root itself.
fn clean(name: &str) -> Result<Option<PathBuf>, String> {
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

    /// How extension records name the entry after them ([`Extensions::entry`]): a GNU
    /// long name or link, a PAX path, linkpath, size; what readers disagree on is refused.
    #[test]
    fn extension_records_name_the_next_entry() {
        fn block(name: &str, link: &str, ustar: bool, prefix: &str) -> [u8; BLOCK] {
            let mut b = [0u8; BLOCK];
            b[..name.len()].copy_from_slice(name.as_bytes());
            b[157..157 + link.len()].copy_from_slice(link.as_bytes());
            if ustar {
                b[257..265].copy_from_slice(b"ustar\x0000");
            }
            b[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
            b
        }
        let pax = |records: &[u8]| Some(records.to_vec());
        let ok = |name: &str, link: Option<&str>| Ok((name.to_string(), link.map(String::from)));
        let no = |entry: &str, why: &str| Err(format!("archive entry {entry:?} refused: {why}"));
        let plain = block("a.txt", "", true, "");
        let linked = block("s", "short", true, "");
        type Case = (
            Option<Vec<u8>>,
            Option<Vec<u8>>,
            Option<Vec<u8>>,
            [u8; BLOCK],
            Result<(String, Option<String>), String>,
        );
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            (None, None, None, plain, ok("a.txt", None)),
            (None, None, None, block("a.txt", "", true, "dir"), ok("dir/a.txt", None)),
            (None, None, None, block("a.txt", "", false, "dir"), no("a.txt", "its header is not ustar but has bytes in the ustar name prefix, which some tar readers prepend to its name")),
            (None, None, None, linked, ok("s", Some("short"))),
            // A GNU long name (its NULs dropped) replaces the header's, prefix and all.
            (Some(b"long/name\0".to_vec()), None, None, block("a.txt", "", false, "dir"), ok("long/name", None)),
            (None, Some(b"long/target\0".to_vec()), None, linked, ok("s", Some("long/target"))),
            // PAX records: path, linkpath, a size that must agree, others ignored.
            (None, None, pax(b"12 path=p/x\n"), plain, ok("p/x", None)),
            (None, None, pax(b"15 linkpath=t2\n"), linked, ok("s", Some("t2"))),
            (None, None, pax(b"9 size=7\n20 mtime=1700000000\n"), plain, ok("a.txt", None)),
            (None, None, pax(b"9 size=8\n"), plain, no("a.txt", "its PAX size disagrees with its header")),
            (None, None, pax(b"9 size=x\n"), plain, no("a.txt", "its PAX size disagrees with its header")),
            (None, None, pax(b"22 GNU.sparse.major=1\n"), plain, no("a.txt", "sparse files are not unpacked")),
            (None, None, pax(b"9 junk\n"), plain, no("a.txt", "its PAX records are malformed")),
            (None, None, pax(b"10 path=\xff\n"), plain, no("\u{fffd}", "its name is not UTF-8")),
            // Both kinds name it: tarfile keeps the long name, GNU tar the PAX path.
            (Some(b"gnu".to_vec()), None, pax(b"12 path=pax\n"), plain, no("pax", "both a GNU long name and a PAX path name it, and tar readers differ on which counts")),
            (None, Some(b"gnu".to_vec()), pax(b"16 linkpath=pax\n"), linked, no("s", "both a GNU long link and a PAX linkpath give its target, and tar readers differ on which counts")),
        ];
        for (i, (long_name, long_link, pax, block, expected)) in cases.into_iter().enumerate() {
            let mut next = Extensions {
                long_name,
                long_link,
                pax,
                record: Some("record".into()),
            };
            let header = tar::Header::from_byte_slice(&block);
            let got = next
                .entry(header, &block, 7)
                .map(|(name, link)| (name, link.map(|l| String::from_utf8(l).unwrap())))
                .map_err(|e| e.to_string());
            assert_eq!(got, expected, "case {i}");
            assert!(next.long_name.is_none() && next.long_link.is_none() && next.pax.is_none());
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

    #[test]
    fn numbers_are_read_only_where_every_reader_agrees() {
        assert_eq!(number(b"00000001750\0"), Some(1000));
        assert_eq!(number(b"  1750 \0\0\0\0\0"), Some(1000));
        assert_eq!(number(b"0000644\0"), Some(0o644));
        let mut base256 = [0u8; 12];
        base256[0] = 0x80;
        base256[11] = 5;
        assert_eq!(number(&base256), Some(5));
        base256[2] = 1; // beyond 64 bits: the `tar` crate would drop it
        assert_eq!(number(&base256), None);
        base256 = [0xff; 12]; // negative
        assert_eq!(number(&base256), None);
        for bad in [
            &b"\0\0\0\0"[..],
            b"    ",
            b"+17\0",
            b"1_7\0",
            b"0o17",
            b"18\0",
            b"1 7\0",
        ] {
            assert_eq!(number(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn pax_records_are_read_by_their_lengths() {
        let records = pax_records(b"12 path=a\nb\n11 size=42\n").unwrap();
        assert_eq!(records, [(&b"path"[..], &b"a\nb"[..]), (b"size", b"42")]);
        for bad in [
            &b"12 path=ab\n"[..], // longer than what is there
            b"10 path=ab\n",      // shorter: it does not end at the newline
            b"11 path=ab\n junk", // bytes after the last record
            b"9 =value\n",        // no key
            b"11 pathab\n\n",     // no '='
            b"x1 path=a\n",
        ] {
            assert!(pax_records(bad).is_err(), "{bad:?}");
        }
        assert!(global(b"28 comment=0123456789abcdef\n").is_ok());
        assert_eq!(
            global(b"11 size=10\n").unwrap_err(),
            "it sets \"size\" for the entries after it, which bootstage does not apply"
        );
    }
}
