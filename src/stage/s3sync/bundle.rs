//! One pass of a bundle: one archive object into a new generation of its destination.
//!
//! 1. If the current generation came from this archive and is intact as sealed (and any
//!    pinned SHA-256 is the one it was verified against), ask with `If-None-Match` its
//!    ETag: a 304 ends the pass, no body sent, nothing written.
//! 2. Else stream the body: each chunk is counted and hashed (and S3's full-object
//!    checksum is checked) as it is handed, through a bounded channel, to a blocking
//!    thread that decompresses and unpacks it into a staging generation
//!    (`sync::archive`). A large archive comes in byte ranges, several at once, handed on
//!    in order (`source::Parts`). Memory stays bounded whatever the archive's size: the
//!    parts (`parts_in_flight × part_size`, 64 MiB by default), the channel ([`CHANNEL`]
//!    chunks, each at most hyper's read buffer, ~400 KiB: under 16 MiB), and the
//!    decompressor's window (zstd's at most 128 MiB, as the archive asks; 8 MiB or less
//!    for zstd's levels up to 19 without `--long`).
//! 3. Only when the whole body arrived and verified (size, checksum or MD5, the pin) and
//!    every entry unpacked is the tree handed over and swapped in. A download that fails
//!    part way wins over what the unpacker made of the truncated stream: the pass is
//!    retried as any transfer is. A refused entry stops the download at once.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::{Buf, Bytes};
use tokio::sync::mpsc;

use super::owner::Ownership;
use super::progress::Counters;
use super::{Report, SyncError};
use crate::base::retry::Deadline;
use crate::settings::SyncSpec;
use crate::sync::archive::{self, Format, Limits, UnpackError, Unpacked};
use crate::sync::source::{Bundle, Fetched, SourceError};
use crate::sync::tree::{self, Archived, Destination, Entry, Manifest, Staging};

/// Chunks in flight between the download and the unpacker (each at most a few hundred KiB).
const CHANNEL: usize = 32;

pub(super) async fn pass(
    bundle: &Bundle,
    dest: &mut Destination,
    spec: &SyncSpec,
    owner: &Ownership,
    counters: &Counters,
    total_bytes: &AtomicU64,
    deadline: Deadline,
) -> Result<Report, SyncError> {
    let started = std::time::Instant::now();
    let url = bundle.url();
    let pin = spec.sha256.as_deref().map(str::to_ascii_lowercase);
    let settings = settings_of(spec);
    let before = Before::of(dest, &url, pin.as_deref(), &settings);
    counters.total.store(1, Ordering::Relaxed);
    counters.done.store(0, Ordering::Relaxed);
    let unchanged = Report {
        objects: before.files,
        ..Report::default()
    };
    let mut download = match bundle
        .fetch(
            before.known.as_deref(),
            pin.is_some(),
            spec.parts(),
            deadline,
        )
        .await?
    {
        Fetched::Unchanged => {
            counters.done.store(1, Ordering::Relaxed);
            return Ok(unchanged);
        }
        Fetched::Missing => return missing_archive(dest, spec, owner, url, &before),
        Fetched::Body(download) => download,
    };
    if let Some(why) = tree::blocked(dest.record(), &url, &download.etag) {
        held_back(spec, &url, &why);
        counters.done.store(1, Ordering::Relaxed);
        return Ok(unchanged);
    }
    let (etag, size, parts) = (download.etag.clone(), download.size, download.parts);
    let staging = dest.staging()?;
    let (tx, rx) = mpsc::channel::<Bytes>(CHANNEL);
    // Each chunk of the body to the unpacker, counted, then the whole verified: what was
    // verified and the pin, or `None` when the unpacker stopped reading first.
    let fed = async move {
        while let Some(chunk) = download.next().await {
            let chunk = chunk?;
            total_bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            if tx.send(chunk).await.is_err() {
                // The unpacker stopped: its error says why, unless the entry pins the
                // archive and these are not its bytes: then that is the failure (76).
                if pin.is_some() {
                    while let Some(chunk) = download.next().await {
                        chunk?;
                    }
                    download.finish(pin.as_deref())?;
                }
                return Ok(None);
            }
        }
        drop(tx);
        download
            .finish(pin.as_deref())
            .map(|verified| Some((verified, pin)))
    };
    let streamed = stream(rx, fed, staging, bundle.format(), spec.limits()).await?;
    let Streamed {
        staging,
        unpacked,
        verified,
        pin,
    } = streamed;
    let fetched = started.elapsed();
    let archived = Archived {
        etag,
        size,
        sha256: pin,
        settings,
    };
    let (links, unpacked_bytes) = (unpacked.links.len(), unpacked.bytes);
    let report = commit(dest, staging, unpacked, spec, owner, url, archived)?;
    counters.done.store(1, Ordering::Relaxed);
    let ms = |d: std::time::Duration| d.as_millis() as u64;
    tracing::info!(
        dest = %spec.to.display(),
        files = report.objects,
        links,
        bytes = size,
        unpacked_bytes,
        verified,
        parts,
        fetch_ms = ms(fetched),
        commit_ms = ms(started.elapsed() - fetched),
        "swapped in a new generation from the archive"
    );
    Ok(report)
}

/// The owner, group and modes a tree is handed over with, as its manifest records them:
/// a generation unpacked with others is unpacked again.
fn settings_of(spec: &SyncSpec) -> String {
    format!(
        "owner={:?} group={:?} file_mode={:o} dir_mode={:o}",
        spec.owner, spec.group, spec.file_mode, spec.dir_mode
    )
}

/// What a pass needs of the current generation's manifest; not the manifest itself,
/// which would be held beside the new one while the archive unpacks.
#[derive(Debug)]
struct Before {
    /// The version S3 is asked about (`If-None-Match`).
    known: Option<String>,
    /// The files of the current generation, when it came from this source.
    files: usize,
    /// The current generation is this source's, empty (a missing archive, allowed).
    was_empty: bool,
}

impl Before {
    fn of(dest: &Destination, url: &str, pin: Option<&str>, settings: &str) -> Before {
        let old = Some(dest.manifest())
            .filter(|m| m.source == url)
            .unwrap_or_default();
        let intact = || dest.has_current() && dest.intact(&old);
        let known = known(old.archive.as_ref(), pin, settings, intact).map(str::to_string);
        // A version rolled back from, or that failed its verify, is what S3 is asked about
        // instead: while the source still holds it, a 304 ends the pass.
        let held = tree::blocked_version(dest.record(), url).map(str::to_string);
        Before {
            known: held.or(known),
            files: old.files.len(),
            was_empty: old.source == url && old.archive.is_none() && old.files.is_empty(),
        }
    }
}

/// The ETag of the archive the current generation came from, when a 304 for it means
/// nothing is to be done: unpacked with the same settings, verified against the same pin
/// (if there is one), and on disk as sealed (`intact`, asked last: it reads the tree).
fn known<'a>(
    archived: Option<&'a Archived>,
    pin: Option<&str>,
    settings: &str,
    intact: impl FnOnce() -> bool,
) -> Option<&'a str> {
    archived
        .filter(|a| pin.is_none() || a.sha256.as_deref() == pin)
        .filter(|a| a.settings == settings)
        .filter(|_| intact())
        .map(|a| a.etag.as_str())
}

/// What a missing archive means for the destination.
#[derive(Debug, PartialEq, Eq)]
enum Missing {
    /// Not allowed to be empty: the pass fails.
    Refused,
    /// Allowed, and the current generation is this source's empty one already.
    Unchanged,
    /// Allowed: an empty generation is swapped in.
    Emptied,
}

fn missing(allow_empty: bool, has_current: bool, was_empty: bool) -> Missing {
    match (allow_empty, has_current && was_empty) {
        (false, _) => Missing::Refused,
        (true, true) => Missing::Unchanged,
        (true, false) => Missing::Emptied,
    }
}

/// A missing archive: the pass fails, or (allowed to be empty) the destination is left
/// as it is or swapped to an empty generation.
fn missing_archive(
    dest: &mut Destination,
    spec: &SyncSpec,
    owner: &Ownership,
    url: String,
    before: &Before,
) -> Result<Report, SyncError> {
    match missing(spec.allow_empty, dest.has_current(), before.was_empty) {
        Missing::Refused => Err(SyncError::Empty(url, "no such archive")),
        Missing::Unchanged => Ok(Report {
            objects: before.files,
            ..Report::default()
        }),
        Missing::Emptied => {
            commit_empty(dest, spec, owner, url)?;
            Ok(Report {
                deleted: before.files,
                swapped: true,
                ..Report::default()
            })
        }
    }
}

/// Swaps in an empty generation of `url` (its archive missing, and allowed to be).
fn commit_empty(
    dest: &mut Destination,
    spec: &SyncSpec,
    owner: &Ownership,
    url: String,
) -> Result<(), SyncError> {
    let staging = dest.staging()?;
    staging.finish(
        [],
        &[],
        &Default::default(),
        (owner.uid, owner.gid),
        spec.dir_mode,
    )?;
    let manifest = Manifest {
        source: url,
        ..Manifest::default()
    };
    dest.commit(staging, &manifest)?;
    Ok(())
}

/// An archive's body downloaded, verified and unpacked into the staging tree.
struct Streamed {
    staging: Staging,
    unpacked: Unpacked,
    /// What the download verified (`Download::finish`).
    verified: String,
    /// The pinned SHA-256 it matched, if any.
    pin: Option<String>,
}

/// What feeding the unpacker came to: what the download verified and the pin, or `None`
/// when the unpacker stopped reading first.
type Fed = Result<Option<(String, Option<String>)>, SourceError>;

/// Unpacks what `fed` sends on `rx` into `staging`, on a blocking thread, as it arrives;
/// the download and the unpacker decide the outcome together ([`decided`]).
async fn stream(
    rx: mpsc::Receiver<Bytes>,
    fed: impl Future<Output = Fed>,
    staging: Staging,
    format: Format,
    limits: Limits,
) -> Result<Streamed, SyncError> {
    // Dropping this pass (its deadline, SIGTERM) stops the unpacker's thread too.
    let cancel = CancelOnDrop(Arc::new(AtomicBool::new(false)));
    let stop = cancel.0.clone();
    let unpacker = tokio::task::spawn_blocking(move || {
        let mut reader = ChannelReader {
            rx,
            chunk: Bytes::new(),
        };
        let unpacked = archive::unpack(&mut reader, format, &staging, limits, &stop);
        // Past the archive's end marker (a tar's padding, trailing bytes): the rest of
        // the body still arrives, to be verified, and is not unpacked.
        if unpacked.is_ok() {
            while reader.rx.blocking_recv().is_some() {}
        }
        (staging, unpacked)
    });
    let fed = fed.await;
    let (staging, unpacked) = unpacker
        .await
        .map_err(|e| SyncError::Settings(format!("unpacking task: {e}")))?;
    let ((verified, pin), unpacked) = decided(fed, unpacked)?;
    Ok(Streamed {
        staging,
        unpacked,
        verified,
        pin,
    })
}

/// What decides the pass, from what the download and the unpacker each made of the
/// body: a failed or unverified download, whatever the unpacker made of it; then the
/// unpacker's error; an unpacker that stopped reading without one is an error too.
fn decided<V, U>(
    fed: Result<Option<V>, SourceError>,
    unpacked: Result<U, UnpackError>,
) -> Result<(V, U), SyncError> {
    let Some(done) = fed? else {
        unpacked?;
        let why = "the unpacker stopped reading before the end of the archive".into();
        return Err(SyncError::Settings(why));
    };
    Ok((done, unpacked?))
}

/// Hands the unpacked tree over (modes, owners) and swaps it in with its manifest.
fn commit(
    dest: &mut Destination,
    staging: Staging,
    unpacked: Unpacked,
    spec: &SyncSpec,
    owner: &Ownership,
    url: String,
    archived: Archived,
) -> Result<Report, SyncError> {
    staging.finish(
        unpacked
            .files
            .iter()
            .map(|(rel, _, exec)| (rel.as_path(), archive::file_mode(spec.file_mode, *exec))),
        &unpacked.links,
        &unpacked.dirs,
        (owner.uid, owner.gid),
        spec.dir_mode,
    )?;
    // The unpacked names move into the manifest: each kept once (an archive's entries need
    // no key, and the archive's ETag is `archive`'s). The old manifest is read again only
    // to count what went, while the new one is all that is held.
    let objects = unpacked.files.len();
    let files: BTreeMap<String, Entry> = unpacked
        .files
        .into_iter()
        .map(|(rel, size, _)| {
            let entry = Entry {
                key: String::new(),
                etag: String::new(),
                size,
            };
            (name_of(rel), entry)
        })
        .collect();
    let deleted = Some(dest.manifest())
        .filter(|m| m.source == url)
        .map_or(0, |m| {
            m.files.keys().filter(|k| !files.contains_key(*k)).count()
        });
    let bytes = archived.size;
    let manifest = Manifest {
        source: url,
        files,
        links: names(unpacked.links),
        dirs: names(unpacked.dirs),
        archive: Some(archived),
    };
    dest.commit(staging, &manifest)?;
    Ok(Report {
        objects,
        downloaded: 1,
        bytes,
        deleted,
        list_pages: 0,
        swapped: true,
    })
}

/// Says why the version a source holds is not swapped in.
pub(super) fn held_back(spec: &SyncSpec, url: &str, why: &tree::Blocked) {
    match why {
        tree::Blocked::Pinned(pin) => tracing::info!(
            dest = %spec.to.display(),
            source = url,
            "staying on the generation {} rolled back to (by {} at {}) until the source holds another version; `bootstage rollback --clear` ends this",
            pin.to, pin.by, pin.at
        ),
        tree::Blocked::Failed => tracing::info!(
            dest = %spec.to.display(),
            source = url,
            "the source holds a version that failed its verify here; staying on the current generation until it changes"
        ),
    }
}

/// Sets its flag when dropped: the unpacker checks it between entries.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Relative paths as the manifest keeps them.
fn names(paths: impl IntoIterator<Item = PathBuf>) -> BTreeSet<String> {
    paths.into_iter().map(name_of).collect()
}

/// A path as the manifest keeps it, moved, not copied (an archive's names are UTF-8).
fn name_of(path: PathBuf) -> String {
    path.into_os_string()
        .into_string()
        .unwrap_or_else(|p| p.to_string_lossy().into_owned())
}

/// The unpacker's side of the channel, as a blocking `Read`: the end of the channel (the
/// download finished, failed, or was dropped) is the end of the stream.
struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    chunk: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.chunk = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk.advance(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::exit::ExitStatus;
    use crate::stage::error::ExitCode;

    #[test]
    fn a_304_may_end_the_pass_only_for_the_archive_the_tree_came_from_as_it_was() {
        let settings = "owner=None group=None file_mode=644 dir_mode=755";
        let archived = |sha256: Option<&str>, settings: &str| Archived {
            etag: "\"e1\"".into(),
            size: 10,
            sha256: sha256.map(str::to_string),
            settings: settings.into(),
        };
        let plain = archived(None, settings);
        let pinned = archived(Some("ab12"), settings);
        let other = archived(
            None,
            "owner=Some(\"app\") group=None file_mode=644 dir_mode=755",
        );
        // (the current generation's archive, the entry's pin, intact on disk) → the ETag
        // asked about.
        let cases = [
            (None, None, true, None),
            (Some(&plain), None, true, Some("\"e1\"")),
            (Some(&plain), None, false, None),
            // Pinned now: only an archive verified against that pin.
            (Some(&plain), Some("ab12"), true, None),
            (Some(&pinned), Some("ab12"), true, Some("\"e1\"")),
            (Some(&pinned), Some("cd34"), true, None),
            // No pin now: one verified earlier is still the archive it was.
            (Some(&pinned), None, true, Some("\"e1\"")),
            (Some(&pinned), Some("ab12"), false, None),
            // Unpacked with other owners or modes: unpacked again.
            (Some(&other), None, true, None),
        ];
        for (archived, pin, intact, expected) in cases {
            let asked = std::cell::Cell::new(false);
            let got = known(archived, pin, settings, || {
                asked.set(true);
                intact
            });
            assert_eq!(got, expected, "{archived:?} {pin:?} intact {intact}");
            // The tree is read only for an archive that passed the other checks.
            assert_eq!(
                asked.get(),
                expected.is_some() || !intact,
                "{archived:?} {pin:?}"
            );
        }
    }

    #[test]
    fn a_missing_archive_fails_or_leaves_an_empty_tree() {
        // (allow_empty, has a current generation, which is this source's and empty)
        let cases = [
            (false, false, false, Missing::Refused),
            (false, true, true, Missing::Refused),
            (true, false, false, Missing::Emptied),
            (true, false, true, Missing::Emptied),
            (true, true, false, Missing::Emptied),
            (true, true, true, Missing::Unchanged),
        ];
        for (allow_empty, has_current, was_empty, expected) in cases {
            assert_eq!(
                missing(allow_empty, has_current, was_empty),
                expected,
                "{allow_empty} {has_current} {was_empty}"
            );
        }
    }

    #[test]
    fn a_failed_download_decides_the_pass_whatever_the_unpacker_made_of_it() {
        let corrupt = || SourceError::Corrupt {
            key: "a.tar".into(),
            why: "MD5 mismatch".into(),
        };
        let refused = || UnpackError::Refused {
            entry: "../x".into(),
            why: "leaves the tree".into(),
        };
        let stopped = "sync settings: the unpacker stopped reading before the end of the archive";
        // (the download, the unpacker) → the pass's error and exit code, or success.
        type Case = (
            Result<Option<&'static str>, SourceError>,
            Result<&'static str, UnpackError>,
            Result<(&'static str, &'static str), (&'static str, ExitCode)>,
        );
        let cases: [Case; 6] = [
            (
                Err(corrupt()),
                Err(refused()),
                Err((
                    "a.tar: verification failed: MD5 mismatch",
                    ExitCode::Protocol,
                )),
            ),
            (
                Err(corrupt()),
                Ok("tree"),
                Err((
                    "a.tar: verification failed: MD5 mismatch",
                    ExitCode::Protocol,
                )),
            ),
            (
                Ok(None),
                Err(refused()),
                Err((
                    "archive entry \"../x\" refused: leaves the tree",
                    ExitCode::BadUserData,
                )),
            ),
            (Ok(None), Ok("tree"), Err((stopped, ExitCode::BadUserData))),
            (
                Ok(Some("MD5")),
                Err(refused()),
                Err((
                    "archive entry \"../x\" refused: leaves the tree",
                    ExitCode::BadUserData,
                )),
            ),
            (Ok(Some("MD5")), Ok("tree"), Ok(("MD5", "tree"))),
        ];
        for (fed, unpacked, expected) in cases {
            let got = decided(fed, unpacked).map_err(|e| (e.to_string(), e.exit_code()));
            let expected = expected.map_err(|(why, code)| (why.to_string(), code));
            assert_eq!(got, expected);
        }
    }
}
