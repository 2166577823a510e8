//! The tar stream as bytes: blocks, header checksums and numbers, extension records (GNU
//! long names and links, PAX records, global PAX headers) and the tape they are read
//! from. Read only in the forms GNU tar, Python's tarfile and the `tar` crate all read
//! alike; [`super::unpack`] decides what each entry then does.

use std::io::{self, Read};

use super::{Format, UnpackError, malformed, refused};

/// A name or a set of PAX records in one extension entry: at most this many bytes.
const MAX_EXTENSION: u64 = 64 * 1024;
/// Global PAX records (`g`) that change nothing bootstage writes: owners and times, which
/// it ignores in every entry, and a comment (`git archive` puts the commit there). Any
/// other global record (`size`, `path`, `linkpath`, `hdrcharset`…) is refused: other tar
/// readers apply it to every entry after it.
const GLOBAL_KEYS: &[&[u8]] = &[
    b"comment", b"mtime", b"atime", b"ctime", b"uid", b"gid", b"uname", b"gname",
];
/// A tar block.
pub(super) const BLOCK: usize = 512;

pub(super) fn zeros(block: &[u8]) -> bool {
    block.iter().all(|b| *b == 0)
}

/// Whether a header's checksum field is the sum of its bytes, the field itself counted as
/// spaces (the unsigned sum, the one the `tar` crate accepts).
pub(super) fn checksum_matches(block: &[u8; BLOCK]) -> bool {
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
pub(super) fn number(field: &[u8]) -> Option<u64> {
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
pub(super) struct Extensions {
    pub(super) long_name: Option<Vec<u8>>,
    pub(super) long_link: Option<Vec<u8>>,
    pub(super) pax: Option<Vec<u8>>,
    /// The name of the last extension record read: an entry must follow it.
    pub(super) record: Option<String>,
}

impl Extensions {
    /// Reads an extension record's data (its header's type is `L`, `K`, `x` or `g`): a
    /// name, a link target or PAX records for the entry after it; a global PAX record set
    /// is only checked ([`global`]).
    pub(super) fn read<R: Read>(
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
    pub(super) fn entry(
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
pub(super) struct Tape<R> {
    pub(super) inner: R,
    pub(super) offset: u64,
}

impl<R: Read> Tape<R> {
    pub(super) fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
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
    pub(super) fn fill(&mut self, buf: &mut [u8]) -> io::Result<bool> {
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

    pub(super) fn exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        match self.fill(buf)? {
            true => Ok(()),
            false => Err(self.cut()),
        }
    }

    /// The padding after `size` bytes of data, up to the next block.
    pub(super) fn padding(&mut self, size: u64) -> io::Result<()> {
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
/// [`Extensions::read`]; every other type is an entry, judged by [`super::verdict`].
pub(super) fn is_extension(kind: u8) -> bool {
    matches!(kind, b'L' | b'K' | b'x' | b'g')
}

#[cfg(test)]
mod tests {
    use super::*;

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
