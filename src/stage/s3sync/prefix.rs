//! One pass over a prefix source (S3 or a directory) into a destination: list, compare
//! with the current generation's manifest, carry unchanged files forward, download the
//! rest with bounded concurrency (each retried on its own, a throttled one waiting its
//! turn), verify, set modes and owners, and swap the new generation in. `mod.rs` starts a
//! pass over when an object changes mid-pass; `bundle.rs` does the same for an archive.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::TryStreamExt;

use super::owner::Ownership;
use super::progress::Counters;
use super::{FETCH_RETRIES, Report, SyncError};
use crate::base::retry::{self, RetryHint};
use crate::settings::SyncSpec;
use crate::sync::keys;
use crate::sync::source::{Object, Source, SourceError};
use crate::sync::tree::{self, Destination, Entry, Manifest, Staging};

pub(super) async fn pass_once(
    source: &Source,
    dest: &mut Destination,
    spec: &SyncSpec,
    owner: &Ownership,
    concurrency: usize,
    counters: &Counters,
    total_bytes: &AtomicU64,
) -> Result<Report, SyncError> {
    let started = std::time::Instant::now();
    let (objects, list_pages) = source.list().await?;
    let listed = started.elapsed();
    let files = relative(source, objects)?;
    let url = source.url();
    if files.is_empty() && !spec.allow_empty {
        return Err(SyncError::Empty(url, "no objects under it"));
    }
    if let Some(why) = tree::blocked(dest.record(), &url, &listing_version(&files)) {
        super::bundle::held_back(spec, &url, &why);
        counters.total.store(files.len() as u64, Ordering::Relaxed);
        counters.done.store(files.len() as u64, Ordering::Relaxed);
        return Ok(Report {
            objects: files.len(),
            list_pages,
            ..Report::default()
        });
    }
    let old = Some(dest.manifest())
        .filter(|m| m.source == url)
        .unwrap_or_default();
    let compared = compare(&old, &files, |rel, size| dest.unchanged(rel, size));
    let mut report = Report {
        objects: files.len(),
        deleted: compared.deleted,
        list_pages,
        ..Report::default()
    };
    // A pass that starts over counts afresh.
    counters.total.store(files.len() as u64, Ordering::Relaxed);
    counters.done.store(0, Ordering::Relaxed);
    if dest.has_current() && compared.nothing_to_do() {
        counters.done.store(files.len() as u64, Ordering::Relaxed);
        return Ok(report);
    }

    let staging = dest.staging()?;
    let dirs = dirs_of(&files);
    staging.mkdirs(&dirs)?;
    let mut fetch = Vec::new();
    for ((rel, object), same) in files.iter().zip(&compared.unchanged) {
        match *same && staging.carry(dest, rel) {
            true => {
                counters.done.fetch_add(1, Ordering::Relaxed);
            }
            false => fetch.push((rel, object)),
        }
    }
    report.downloaded = fetch.len();
    report.bytes = download(source, fetch, &staging, concurrency, counters, total_bytes).await?;
    let fetched = started.elapsed();
    commit(dest, staging, &files, &dirs, spec, owner, url)?;
    report.swapped = true;
    let ms = |d: Duration| d.as_millis() as u64;
    tracing::info!(
        dest = %spec.to.display(),
        objects = report.objects,
        downloaded = report.downloaded,
        deleted = report.deleted,
        bytes = report.bytes,
        list_ms = ms(listed),
        fetch_ms = ms(fetched - listed),
        commit_ms = ms(started.elapsed() - fetched),
        "swapped in a new generation"
    );
    Ok(report)
}

/// The listed objects that are files of the tree, each with its relative path (a key
/// that is a directory marker is none), checked: no path both a file and a directory.
fn relative(source: &Source, objects: Vec<Object>) -> Result<Vec<(PathBuf, Object)>, SyncError> {
    let mut files: Vec<(PathBuf, Object)> = Vec::with_capacity(objects.len());
    for object in objects {
        if let Some(rel) = keys::relative_path(&object.key, source.rest(&object.key))? {
            files.push((rel, object));
        }
    }
    keys::check_no_file_dir_conflict(files.iter().map(|(rel, o)| (o.key.as_str(), rel.as_path())))?;
    Ok(files)
}

/// The listing against the current generation's manifest.
#[derive(Debug, PartialEq, Eq)]
struct Compared {
    /// For each listed file: listed as before, and on disk exactly as bootstage sealed it.
    unchanged: Vec<bool>,
    /// The manifest's files the listing no longer has.
    deleted: usize,
}

impl Compared {
    /// Whether the current generation is the listing's already.
    fn nothing_to_do(&self) -> bool {
        self.deleted == 0 && self.unchanged.iter().all(|u| *u)
    }
}

/// Compares the listing with `old` (the current generation's manifest, empty when it
/// came from another source); `on_disk` says whether a file is as sealed and of its size,
/// and is asked only about a file listed as before.
fn compare(
    old: &Manifest,
    files: &[(PathBuf, Object)],
    on_disk: impl Fn(&Path, u64) -> bool,
) -> Compared {
    let unchanged = files
        .iter()
        .map(|(rel, o)| {
            let listed = old.files.get(&*rel.to_string_lossy());
            listed.is_some_and(|e| e.etag == o.version.token() && e.size == o.size)
                && on_disk(rel, o.size)
        })
        .collect();
    let names: BTreeSet<String> = files
        .iter()
        .map(|(rel, _)| rel.to_string_lossy().into_owned())
        .collect();
    let deleted = old.files.keys().filter(|k| !names.contains(*k)).count();
    Compared { unchanged, deleted }
}

/// Every directory above a file of the tree.
fn dirs_of(files: &[(PathBuf, Object)]) -> BTreeSet<PathBuf> {
    let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
    for (rel, _) in files {
        dirs.extend(
            rel.ancestors()
                .skip(1)
                .filter(|d| !d.as_os_str().is_empty())
                .map(Path::to_path_buf),
        );
    }
    dirs
}

/// Downloads `fetch` into the staging tree, `concurrency` at once; the bytes downloaded.
async fn download(
    source: &Source,
    fetch: Vec<(&PathBuf, &Object)>,
    staging: &Staging,
    concurrency: usize,
    counters: &Counters,
    total_bytes: &AtomicU64,
) -> Result<u64, SyncError> {
    let bytes = AtomicU64::new(0);
    futures_util::stream::iter(fetch.into_iter().map(Ok::<_, SyncError>))
        .try_for_each_concurrent(concurrency, |(rel, object)| {
            let bytes = &bytes;
            async move {
                let n = fetch_retrying(source, object, staging, rel, counters).await?;
                bytes.fetch_add(n, Ordering::Relaxed);
                counters.done.fetch_add(1, Ordering::Relaxed);
                total_bytes.fetch_add(n, Ordering::Relaxed);
                Ok(())
            }
        })
        .await?;
    Ok(bytes.into_inner())
}

/// Hands the complete tree over, files then directories deepest first, and swaps it in
/// with its manifest.
fn commit(
    dest: &mut Destination,
    staging: Staging,
    files: &[(PathBuf, Object)],
    dirs: &BTreeSet<PathBuf>,
    spec: &SyncSpec,
    owner: &Ownership,
    url: String,
) -> Result<(), SyncError> {
    staging.finish(
        files.iter().map(|(rel, _)| (rel.as_path(), spec.file_mode)),
        &[],
        dirs,
        (owner.uid, owner.gid),
        spec.dir_mode,
    )?;
    let manifest = Manifest {
        source: url,
        files: files
            .iter()
            .map(|(rel, o)| {
                let entry = Entry {
                    key: o.key.clone(),
                    etag: o.version.token(),
                    size: o.size,
                };
                (rel.to_string_lossy().into_owned(), entry)
            })
            .collect::<BTreeMap<_, _>>(),
        ..Manifest::default()
    };
    dest.commit(staging, &manifest)?;
    Ok(())
}

/// One object into a new file of the staging tree, retried when the transfer itself
/// fails (a connection dropped mid-body is past the SDK's own retries) or S3 throttles it;
/// the partial file is removed before each new attempt.
///
/// A failed transfer is tried `FETCH_RETRIES` more times, then fails the pass. A throttled
/// one (503 SlowDown) waits its turn for as long as the pass's deadline allows, with
/// [`retry::THROTTLED`]'s full jitter: a fleet booting at once asks one prefix for more
/// than S3 serves, and giving up would start the whole pass over, asking for every object
/// again.
async fn fetch_retrying(
    source: &Source,
    object: &Object,
    staging: &Staging,
    rel: &Path,
    counters: &Counters,
) -> Result<u64, SyncError> {
    let at = staging.path().join(rel);
    let mut failed = retry::BACKOFF.full_jitter().take(FETCH_RETRIES);
    let mut throttled = retry::THROTTLED.full_jitter();
    loop {
        let file = staging.create(rel)?;
        let error = match source.fetch(object, file, &at).await {
            Ok(n) => return Ok(n),
            Err(e) => {
                staging.remove(rel);
                SyncError::from(e)
            }
        };
        let is_throttled = matches!(error, SyncError::Source(SourceError::Throttled { .. }));
        let wait = match error.retry_after() {
            Some(_) if is_throttled => throttled.next(),
            Some(_) => failed.next(),
            None => None,
        };
        let Some(wait) = wait else {
            return Err(error);
        };
        if !is_throttled {
            tracing::warn!("retrying a download in {wait:.1?}: {error}");
        } else if counters.throttled.fetch_add(1, Ordering::Relaxed) == 0 {
            // Once a sync: a fleet's prefix is throttled thousands of times, and the
            // deadline's message counts them all.
            tracing::warn!(
                "{error}; S3 is throttling downloads: each waits its turn, up to --sync-timeout"
            );
        } else {
            tracing::debug!("retrying a throttled download in {wait:.1?}: {error}");
        }
        tokio::time::sleep(wait).await;
    }
}

/// The listing's version, as `Manifest::version` gives it for the tree made from it.
fn listing_version(files: &[(PathBuf, Object)]) -> String {
    let entries: BTreeMap<String, (String, u64)> = files
        .iter()
        .map(|(rel, o)| {
            (
                rel.to_string_lossy().into_owned(),
                (o.version.token(), o.size),
            )
        })
        .collect();
    tree::listing_version(
        entries
            .iter()
            .map(|(rel, (v, size))| (rel.as_str(), v.as_str(), *size)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::source::Version;

    fn listed(files: &[(&str, &str, u64)]) -> Vec<(PathBuf, Object)> {
        files
            .iter()
            .map(|(rel, etag, size)| {
                let object = Object {
                    key: format!("p/{rel}"),
                    version: Version::ETag(etag.to_string()),
                    size: *size,
                };
                (PathBuf::from(rel), object)
            })
            .collect()
    }

    fn manifest(files: &[(&str, &str, u64)]) -> Manifest {
        let files = files
            .iter()
            .map(|(rel, etag, size)| {
                let entry = Entry {
                    key: format!("p/{rel}"),
                    etag: etag.to_string(),
                    size: *size,
                };
                (rel.to_string(), entry)
            })
            .collect();
        Manifest {
            source: "s3://b/p/".into(),
            files,
            ..Manifest::default()
        }
    }

    #[test]
    fn a_file_is_carried_forward_only_when_listed_as_before_and_sealed_on_disk() {
        let old = manifest(&[("a", "\"1\"", 1), ("d/b", "\"2\"", 2), ("gone", "\"3\"", 3)]);
        // (listing, files changed on disk) → (unchanged, deleted, nothing to do)
        type Case = (
            Vec<(&'static str, &'static str, u64)>,
            Vec<&'static str>,
            Vec<bool>,
            usize,
            bool,
        );
        let cases: [Case; 7] = [
            (vec![], vec![], vec![], 3, false),
            (
                vec![("a", "\"1\"", 1), ("d/b", "\"2\"", 2)],
                vec![],
                vec![true, true],
                1,
                false,
            ),
            (
                vec![("a", "\"1\"", 1), ("d/b", "\"2\"", 2), ("gone", "\"3\"", 3)],
                vec![],
                vec![true, true, true],
                0,
                true,
            ),
            // A new ETag, a new size, a new file.
            (
                vec![("a", "\"9\"", 1), ("d/b", "\"2\"", 5), ("new", "\"4\"", 4)],
                vec![],
                vec![false, false, false],
                1,
                false,
            ),
            // Listed as before, but changed on disk since it was sealed.
            (
                vec![("a", "\"1\"", 1), ("d/b", "\"2\"", 2), ("gone", "\"3\"", 3)],
                vec!["d/b"],
                vec![true, false, true],
                0,
                false,
            ),
            // Moved: the same object under another name is fetched again.
            (vec![("b", "\"1\"", 1)], vec![], vec![false], 3, false),
            (vec![("a", "\"1\"", 1)], vec!["a"], vec![false], 2, false),
        ];
        for (listing, touched, unchanged, deleted, nothing) in cases {
            let files = listed(&listing);
            let asked = std::cell::RefCell::new(Vec::new());
            let compared = compare(&old, &files, |rel, _| {
                asked.borrow_mut().push(rel.to_path_buf());
                !touched.iter().any(|t| Path::new(t) == rel)
            });
            assert_eq!(
                compared,
                Compared {
                    unchanged: unchanged.clone(),
                    deleted
                },
                "{listing:?}"
            );
            assert_eq!(compared.nothing_to_do(), nothing, "{listing:?}");
            // The disk is asked only about what the listing says is unchanged.
            let listed_as_before = files
                .iter()
                .filter(|(rel, o)| {
                    old.files
                        .get(&*rel.to_string_lossy())
                        .is_some_and(|e| e.etag == o.version.token() && e.size == o.size)
                })
                .count();
            assert_eq!(asked.borrow().len(), listed_as_before, "{listing:?}");
        }
        // Another source's generation: everything is new.
        let compared = compare(
            &Manifest::default(),
            &listed(&[("a", "\"1\"", 1)]),
            |_, _| true,
        );
        assert_eq!(
            compared,
            Compared {
                unchanged: vec![false],
                deleted: 0
            }
        );
    }

    #[test]
    fn every_directory_above_a_file_is_made() {
        let dirs = |files: &[&str]| -> Vec<String> {
            let listing: Vec<(&str, &str, u64)> = files.iter().map(|f| (*f, "\"e\"", 1)).collect();
            dirs_of(&listed(&listing))
                .into_iter()
                .map(|d| d.display().to_string())
                .collect()
        };
        assert_eq!(dirs(&[]), Vec::<String>::new());
        assert_eq!(dirs(&["a"]), Vec::<String>::new());
        assert_eq!(dirs(&["a/b/c", "a/d", "e/f"]), ["a", "a/b", "e"]);
    }
}
