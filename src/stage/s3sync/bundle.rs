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
use crate::sync::archive;
use crate::sync::source::{Bundle, Fetched};
use crate::sync::tree::{self, Archived, Destination, Entry, Manifest};

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
    let old = Some(dest.manifest())
        .filter(|m| m.source == url)
        .unwrap_or_default();
    let pin = spec.sha256.as_deref().map(str::to_ascii_lowercase);
    let settings = format!(
        "owner={:?} group={:?} file_mode={:o} dir_mode={:o}",
        spec.owner, spec.group, spec.file_mode, spec.dir_mode
    );
    let known = old
        .archive
        .as_ref()
        .filter(|a| pin.is_none() || a.sha256 == pin)
        .filter(|a| a.settings == settings)
        .filter(|_| dest.has_current() && dest.intact(&old))
        .map(|a| a.etag.clone());
    // A version rolled back from, or that failed its verify, is what S3 is asked about
    // instead: while the source still holds it, a 304 ends the pass.
    let held = tree::blocked_version(dest.record(), &url).map(str::to_string);
    let known = held.or(known);
    counters.total.store(1, Ordering::Relaxed);
    counters.done.store(0, Ordering::Relaxed);
    let unchanged = Report {
        objects: old.files.len(),
        ..Report::default()
    };
    // What the rest of the pass needs of the old manifest; not the manifest itself, which
    // would be held beside the new one while the archive unpacks.
    let was_empty = old.source == url && old.archive.is_none() && old.files.is_empty();
    let old_files = old.files.len();
    drop(old);
    let mut download = match bundle
        .fetch(known.as_deref(), pin.is_some(), spec.parts(), deadline)
        .await?
    {
        Fetched::Unchanged => {
            counters.done.store(1, Ordering::Relaxed);
            return Ok(unchanged);
        }
        Fetched::Missing if !spec.allow_empty => {
            return Err(SyncError::Empty(url, "no such archive"));
        }
        Fetched::Missing => {
            if dest.has_current() && was_empty {
                return Ok(unchanged);
            }
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
            return Ok(Report {
                deleted: old_files,
                swapped: true,
                ..Report::default()
            });
        }
        Fetched::Body(download) => download,
    };
    if let Some(why) = tree::blocked(dest.record(), &url, &download.etag) {
        held_back(spec, &url, &why);
        counters.done.store(1, Ordering::Relaxed);
        return Ok(unchanged);
    }
    let (etag, size, parts) = (download.etag.clone(), download.size, download.parts);

    let staging = dest.staging()?;
    let (format, limits) = (bundle.format(), spec.limits());
    let (tx, rx) = mpsc::channel::<Bytes>(CHANNEL);
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
    let fed = fed.await;
    let (staging, unpacked) = unpacker
        .await
        .map_err(|e| SyncError::Settings(format!("unpacking task: {e}")))?;
    // A failed or unverified download decides the pass, whatever the unpacker made of it.
    let (verified, pin) = match fed? {
        Some(done) => done,
        None => {
            unpacked?;
            let why = "the unpacker stopped reading before the end of the archive".into();
            return Err(SyncError::Settings(why));
        }
    };
    let unpacked = unpacked?;
    let fetched = started.elapsed();

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
    let (objects, links, unpacked_bytes) =
        (unpacked.files.len(), unpacked.links.len(), unpacked.bytes);
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
    let manifest = Manifest {
        source: url,
        files,
        links: names(unpacked.links),
        dirs: names(unpacked.dirs),
        archive: Some(Archived {
            etag,
            size,
            sha256: pin,
            settings,
        }),
    };
    dest.commit(staging, &manifest)?;
    counters.done.store(1, Ordering::Relaxed);
    let report = Report {
        objects,
        downloaded: 1,
        bytes: size,
        deleted,
        list_pages: 0,
        swapped: true,
    };
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
