//! Bundles in byte ranges: a large archive fetched as parts, several at once, against moto
//! on 127.0.0.1 (through the fault proxy, which records every Range asked for): the first
//! GET asks for the first part only, so a small bundle is one GET and a large one its
//! ranged GETs and one HEAD (for the full-object checksum), no body dropped; unpacked byte
//! for byte; a failed part's rest fetched again alone; an object replaced mid-download (a
//! part's If-Match answered 412) failing cleanly with the old tree kept; SIGTERM ending it
//! at once; a corrupted part caught by the whole object's checksum, a composite checksum
//! left to the size as for one GET; memory bounded for a 300 MB bundle.

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::faults::{self, Faults};
use common::moto::{Counts, moto};
use common::{Outcome, Sandbox, assert_exit};

const MIB: usize = 1 << 20;

/// Incompressible files of these sizes (named by index), as a `.tar` and what each holds.
fn files(sizes: &[usize], seed: u64) -> (Vec<u8>, BTreeMap<String, Vec<u8>>) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut b = tar::Builder::new(Vec::new());
    let mut contents = BTreeMap::new();
    for (i, size) in sizes.iter().enumerate() {
        let mut data = vec![0u8; *size];
        rng.fill(&mut data);
        let name = format!("lib/part-{i}.bin");
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, &name, data.as_slice()).unwrap();
        contents.insert(name, data);
    }
    (b.into_inner().unwrap(), contents)
}

/// The destination holds exactly `contents`: every file, byte for byte, and no other.
fn assert_holds(root: &Path, contents: &BTreeMap<String, Vec<u8>>) {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            match path.is_dir() {
                true => stack.push(path),
                false => found.push(path.strip_prefix(root).unwrap().display().to_string()),
            }
        }
    }
    found.sort();
    assert_eq!(found, contents.keys().cloned().collect::<Vec<_>>());
    for (name, data) in contents {
        let got = std::fs::read(root.join(name)).unwrap();
        assert!(got == *data, "{name} differs from the archive's");
    }
}

/// One `bootstage.sync` entry of `url` into `dest/app` with these part settings, run
/// against `endpoint` (moto, or the proxy in front of it).
async fn sync_parts(sb: &Sandbox, url: &str, endpoint: &str, parts: [u64; 3]) -> Outcome {
    common::run(parts_command(sb, url, endpoint, parts, &[])).await
}

/// The command of `sync_parts`, with `extra` arguments.
fn parts_command(
    sb: &Sandbox,
    url: &str,
    endpoint: &str,
    parts: [u64; 3],
    extra: &[&str],
) -> tokio::process::Command {
    let [above, size, in_flight] = parts;
    sb.seed_sync(serde_json::json!([{
        "from": url,
        "to": sb.path("dest/app"),
        "parts_above": above,
        "part_size": size,
        "parts_in_flight": in_flight,
    }]));
    let mut args = vec!["s3-sync", "--sync-timeout", "60s"];
    args.extend_from_slice(extra);
    let mut cmd = sb.command(&args);
    cmd.envs(moto().env()).env("AWS_ENDPOINT_URL", endpoint);
    cmd
}

/// What is left of unfinished generations beside the destination.
fn staging_left(sb: &Sandbox) -> Vec<String> {
    let mut left = Vec::new();
    let mut stack = vec![sb.path("dest")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.contains("staging") {
                left.push(name);
            } else if entry.file_type().unwrap().is_dir() && !name.starts_with("gen-") {
                stack.push(entry.path());
            }
        }
    }
    left
}

/// 1 MiB parts above 1 MiB, three at once.
const SMALL_PARTS: [u64; 3] = [MIB as u64, MIB as u64, 3];

/// The ranges of 1 MiB parts of an object of `len` bytes, the first one's included.
fn ranges_of(len: usize) -> Vec<String> {
    (0..len.div_ceil(MIB))
        .map(|i| format!("bytes={}-{}", i * MIB, ((i + 1) * MIB).min(len) - 1))
        .collect()
}

fn sorted(ranges: &std::sync::Mutex<Vec<String>>) -> Vec<String> {
    let mut ranges = ranges.lock().unwrap().clone();
    ranges.sort_by_key(|r| r[6..].split('-').next().unwrap().parse::<usize>().unwrap());
    ranges
}

/// A 5.5 MiB archive (6 parts of 1 MiB): the first GET asks for part 0 only, five ranged
/// GETs pinned to its ETag the rest, one HEAD the full-object checksum; every GET carries
/// a Range, none overlaps (no body dropped), and the tree is the archive's byte for byte,
/// verified by the full-object CRC64NVME computed over the parts in order. Asked again:
/// one 304. With `parts_in_flight` 1, the same archive is one GET of the whole object.
#[tokio::test(flavor = "multi_thread")]
async fn a_large_bundle_comes_in_ranged_parts_and_unpacks_exactly() {
    let bucket = moto().bucket("ranged-parts").await;
    let (tar, contents) = files(&[3 * MIB, 2 * MIB + 12_345, 100], 1);
    let archive = zstd::encode_all(tar.as_slice(), 1).unwrap();
    bucket.put_crc64nvme("app.tar.zst", archive.clone()).await;
    let proxy = faults::start(&moto().url, Faults::default()).await;
    let sb = Sandbox::new();
    let mark = moto().mark();
    let url = "s3://ranged-parts/app.tar.zst";
    let out = sync_parts(&sb, url, &proxy.url, SMALL_PARTS).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_holds(&sb.path("dest/app"), &contents);
    assert_eq!(sorted(&proxy.faults.ranges), ranges_of(archive.len()));
    let parts = archive.len().div_ceil(MIB);
    assert_eq!(
        moto().counts("ranged-parts", mark),
        Counts {
            get: parts,
            head: 1,
            ..Counts::default()
        }
    );
    assert!(
        out.stderr.contains("verified=\"CRC64NVME\""),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&format!("parts={parts}")),
        "{}",
        out.stderr
    );

    let mark = moto().mark();
    let out = sync_parts(&sb, url, &proxy.url, SMALL_PARTS).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let not_modified = Counts {
        not_modified: 1,
        ..Counts::default()
    };
    assert_eq!(moto().counts("ranged-parts", mark), not_modified);

    let sb = Sandbox::new();
    let mark = moto().mark();
    let one = [MIB as u64, MIB as u64, 1];
    let proxy = faults::start(&moto().url, Faults::default()).await;
    let out = sync_parts(&sb, url, &proxy.url, one).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_holds(&sb.path("dest/app"), &contents);
    assert_eq!(sorted(&proxy.faults.ranges), Vec::<String>::new());
    let single = Counts {
        get: 1,
        ..Counts::default()
    };
    assert_eq!(moto().counts("ranged-parts", mark), single);
}

/// A bundle no larger than a part is one GET (of `bytes=0-(part-1)`, whose answer covers
/// it, with the full-object checksum verified) and no HEAD; one up to `parts_above` is the
/// first part and the rest in one more ranged GET, plus the HEAD.
#[tokio::test(flavor = "multi_thread")]
async fn a_bundle_of_one_part_is_one_get() {
    let bucket = moto().bucket("ranged-small").await;
    let (small, small_contents) = files(&[MIB / 2], 11);
    bucket.put_crc64nvme("small.tar", small.clone()).await;
    let (middle, middle_contents) = files(&[2 * MIB], 12);
    bucket.put_crc64nvme("middle.tar", middle.clone()).await;
    // Parts of 1 MiB above 4 MiB, three at once.
    let parts = [4 * MIB as u64, MIB as u64, 3];
    for (key, len, contents, counts, ranges) in [
        (
            "small.tar",
            small.len(),
            small_contents,
            Counts {
                get: 1,
                ..Counts::default()
            },
            vec![format!("bytes=0-{}", MIB - 1)],
        ),
        (
            "middle.tar",
            middle.len(),
            middle_contents,
            Counts {
                get: 2,
                head: 1,
                ..Counts::default()
            },
            vec![
                format!("bytes=0-{}", MIB - 1),
                format!("bytes={MIB}-{}", middle.len() - 1),
            ],
        ),
    ] {
        let proxy = faults::start(&moto().url, Faults::default()).await;
        let sb = Sandbox::new();
        let mark = moto().mark();
        let url = format!("s3://ranged-small/{key}");
        let out = sync_parts(&sb, &url, &proxy.url, parts).await;
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert_holds(&sb.path("dest/app"), &contents);
        assert_eq!(moto().counts("ranged-small", mark), counts, "{key}");
        assert_eq!(sorted(&proxy.faults.ranges), ranges, "{key}");
        assert!(
            out.stderr.contains("verified=\"CRC64NVME\""),
            "{key}: {}",
            out.stderr
        );
        let count = len.div_ceil(MIB).min(2);
        assert!(
            out.stderr.contains(&format!("parts={count}")),
            "{key}: {}",
            out.stderr
        );
    }
}

/// A part whose body is cut off is fetched again on its own: one more ranged GET of the
/// rest of that part (from the first byte it lacks to its end), not the first GET again
/// nor any other part.
#[tokio::test(flavor = "multi_thread")]
async fn a_part_that_fails_is_fetched_again_alone() {
    let bucket = moto().bucket("ranged-retry").await;
    let (tar, contents) = files(&[4 * MIB + 777], 2);
    bucket.put_crc64nvme("app.tar", tar.clone()).await;
    let proxy = faults::start(
        &moto().url,
        Faults {
            cut_partial: AtomicUsize::new(1),
            ..Faults::default()
        },
    )
    .await;
    let sb = Sandbox::new();
    let mark = moto().mark();
    let out = sync_parts(&sb, "s3://ranged-retry/app.tar", &proxy.url, SMALL_PARTS).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(proxy.faults.injected.load(Ordering::SeqCst), 1);
    assert_holds(&sb.path("dest/app"), &contents);
    let asked = sorted(&proxy.faults.ranges);
    let parts = ranges_of(tar.len());
    let again: Vec<&String> = asked.iter().filter(|r| !parts.contains(r)).collect();
    assert_eq!(asked.len(), parts.len() + 1, "{asked:?}");
    assert!(parts.iter().all(|r| asked.contains(r)), "{asked:?}");
    // The rest of one part: from past its first byte to its last.
    let (from, to) = again[0][6..].split_once('-').unwrap();
    let (from, to) = (from.parse::<usize>().unwrap(), to.parse::<usize>().unwrap());
    assert!(from % MIB != 0, "{again:?}");
    assert_eq!(to, ((from / MIB + 1) * MIB).min(tar.len()) - 1, "{again:?}");
    let counts = Counts {
        get: parts.len() + 1,
        head: 1,
        ..Counts::default()
    };
    assert_eq!(moto().counts("ranged-retry", mark), counts);
    assert!(
        out.stderr.contains("fetching the rest of the part again"),
        "{}",
        out.stderr
    );
}

/// A part read ahead (parts too small to time the first by, so they come in parallel)
/// whose body is cut off is fetched again on its own, as the first part is above: one
/// more ranged GET of the rest of that part, and the tree exact.
#[tokio::test(flavor = "multi_thread")]
async fn a_part_read_ahead_that_fails_is_fetched_again_alone() {
    const KIB: usize = 1024;
    let bucket = moto().bucket("ranged-ahead").await;
    let (tar, contents) = files(&[MIB + 5 * KIB], 7);
    bucket.put_crc64nvme("app.tar", tar.clone()).await;
    let proxy = faults::start(
        &moto().url,
        Faults {
            // Past the first part, which is the first GET's: a ranged GET of its own.
            cut_partial_after: AtomicUsize::new(4),
            cut_partial: AtomicUsize::new(1),
            ..Faults::default()
        },
    )
    .await;
    let sb = Sandbox::new();
    let part = 128 * KIB;
    let parts = [part as u64, part as u64, 3];
    let out = sync_parts(&sb, "s3://ranged-ahead/app.tar", &proxy.url, parts).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(proxy.faults.injected.load(Ordering::SeqCst), 1);
    assert_holds(&sb.path("dest/app"), &contents);
    let asked = sorted(&proxy.faults.ranges);
    let whole: Vec<String> = (0..tar.len().div_ceil(part))
        .map(|i| format!("bytes={}-{}", i * part, ((i + 1) * part).min(tar.len()) - 1))
        .collect();
    // Every part once, and one more GET: the rest of a part read ahead (all of it, if
    // the cut came before its first byte was read).
    let mut again = asked.clone();
    for range in &whole {
        let at = again.iter().position(|r| r == range).expect(range);
        again.remove(at);
    }
    assert_eq!(again.len(), 1, "{asked:?}");
    let (from, to) = again[0][6..].split_once('-').unwrap();
    let (from, to) = (from.parse::<usize>().unwrap(), to.parse::<usize>().unwrap());
    assert!(from / part >= 1, "{again:?}");
    assert_eq!(
        to,
        ((from / part + 1) * part).min(tar.len()) - 1,
        "{again:?}"
    );
    // Read ahead on its own task, retried under the policy.
    assert!(
        out.stderr
            .contains("; fetching the rest of the part again in ")
            && out.stderr.contains("(retry 1)"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("in turn"), "{}", out.stderr);
}

/// Parts in parallel that come no faster than the first part (it trickles in at about
/// 6.5 MB/s; each later part at a tenth of that, so four at once bring less than the
/// first alone, as from a shared or busy server): after the four after the first, the
/// rest come in turn, one at a time, and the tree is exact.
#[tokio::test(flavor = "multi_thread")]
async fn parts_come_in_turn_where_parallel_does_not_pay() {
    let bucket = moto().bucket("ranged-turn").await;
    let (tar, contents) = files(&[6 * MIB + 777], 8);
    bucket.put_crc64nvme("app.tar", tar.clone()).await;
    let proxy = faults::start(
        &moto().url,
        Faults {
            trickle_first: Some(std::time::Duration::from_millis(10)),
            trickle_pinned: Some(std::time::Duration::from_millis(100)),
            ..Faults::default()
        },
    )
    .await;
    let sb = Sandbox::new();
    let out = sync_parts(&sb, "s3://ranged-turn/app.tar", &proxy.url, SMALL_PARTS).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_holds(&sb.path("dest/app"), &contents);
    assert_eq!(sorted(&proxy.faults.ranges), ranges_of(tar.len()));
    let decided = "s3://ranged-turn/app.tar: the rest in turn, one part at a time: 4 parts in parallel came at ";
    assert!(out.stderr.contains(decided), "{}", out.stderr);
}

/// Parts answered late but fast (a second before each part's first byte, as a distant
/// or busy S3 answers, then at full speed): the probe leaves each part's wait for its
/// first byte out, so the parts stay in parallel, and the tree is exact.
#[tokio::test(flavor = "multi_thread")]
async fn parts_answered_late_but_fast_stay_in_parallel() {
    let bucket = moto().bucket("ranged-late").await;
    let (tar, contents) = files(&[6 * MIB + 777], 9);
    bucket.put_crc64nvme("app.tar", tar.clone()).await;
    let proxy = faults::start(
        &moto().url,
        Faults {
            trickle_first: Some(std::time::Duration::from_millis(10)),
            delay_pinned: Some(std::time::Duration::from_secs(1)),
            ..Faults::default()
        },
    )
    .await;
    let sb = Sandbox::new();
    let out = sync_parts(&sb, "s3://ranged-late/app.tar", &proxy.url, SMALL_PARTS).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_holds(&sb.path("dest/app"), &contents);
    assert_eq!(sorted(&proxy.faults.ranges), ranges_of(tar.len()));
    assert!(!out.stderr.contains("in turn"), "{}", out.stderr);
}

/// A first part that arrived whole before the unpacker first asked for it (its HEAD
/// answered late): its rate says nothing of the link's, so nothing is timed against it,
/// and slow later parts stay in parallel.
#[tokio::test(flavor = "multi_thread")]
async fn a_first_part_come_before_it_was_asked_for_is_not_timed() {
    let bucket = moto().bucket("ranged-early").await;
    let (tar, contents) = files(&[6 * MIB + 777], 10);
    bucket.put_crc64nvme("app.tar", tar.clone()).await;
    let proxy = faults::start(
        &moto().url,
        Faults {
            delay_head: Some(std::time::Duration::from_millis(500)),
            trickle_pinned: Some(std::time::Duration::from_millis(100)),
            ..Faults::default()
        },
    )
    .await;
    let sb = Sandbox::new();
    let out = sync_parts(&sb, "s3://ranged-early/app.tar", &proxy.url, SMALL_PARTS).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_holds(&sb.path("dest/app"), &contents);
    assert!(!out.stderr.contains("in turn"), "{}", out.stderr);
}

/// The object is replaced while a ranged GET is held: that part's If-Match is answered 412
/// and the pass fails as any change mid-sync does (75), leaving the old tree whole and no
/// staging tree behind.
#[tokio::test(flavor = "multi_thread")]
async fn an_object_replaced_mid_download_fails_cleanly_leaving_the_old_tree() {
    let bucket = moto().bucket("ranged-replaced").await;
    let (v1, old) = files(&[3 * MIB], 3);
    bucket.put_crc64nvme("app.tar", v1).await;
    let proxy = faults::start(&moto().url, Faults::default()).await;
    let sb = Sandbox::new();
    let url = "s3://ranged-replaced/app.tar";
    let out = sync_parts(&sb, url, &proxy.url, SMALL_PARTS).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_holds(&sb.path("dest/app"), &old);

    let (v2, _) = files(&[3 * MIB, 5], 4);
    bucket.put_crc64nvme("app.tar", v2).await;
    let (hit, held) = tokio::sync::oneshot::channel();
    let (go, wait) = tokio::sync::oneshot::channel();
    let faults = Faults {
        hold_ranged: std::sync::Mutex::new(Some(("/ranged-replaced/app.tar".into(), hit, wait))),
        ..Faults::default()
    };
    let proxy = faults::start(&moto().url, faults).await;
    let run = {
        let (sb, url) = (&sb, proxy.url.clone());
        async move { sync_parts(sb, "s3://ranged-replaced/app.tar", &url, SMALL_PARTS).await }
    };
    let replace = async {
        held.await.unwrap();
        let (v3, _) = files(&[2 * MIB], 5);
        bucket.put_crc64nvme("app.tar", v3).await;
        go.send(()).unwrap();
    };
    let (out, ()) = tokio::join!(run, replace);
    assert_exit(&out, 75, "app.tar: changed while it was being synced");
    assert_holds(&sb.path("dest/app"), &old);
    assert_eq!(staging_left(&sb), Vec::<String>::new());
}

/// SIGTERM while parts are downloading (one after the first held by the proxy, never answered), in
/// watch mode, where bootstage catches it: the process ends at once (exit 0, as a watch
/// ends), the old tree whole, no staging tree left.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_mid_download_ends_at_once_leaving_the_old_tree() {
    let bucket = moto().bucket("ranged-sigterm").await;
    let (v1, old) = files(&[3 * MIB], 8);
    bucket.put_crc64nvme("app.tar", v1).await;
    let sb = Sandbox::new();
    let url = "s3://ranged-sigterm/app.tar";
    let out = sync_parts(&sb, url, &moto().url, SMALL_PARTS).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let (v2, _) = files(&[3 * MIB, 5], 9);
    bucket.put_crc64nvme("app.tar", v2).await;
    let (hit, held) = tokio::sync::oneshot::channel();
    let (_go, wait) = tokio::sync::oneshot::channel();
    let faults = Faults {
        hold_ranged: std::sync::Mutex::new(Some(("/ranged-sigterm/app.tar".into(), hit, wait))),
        ..Faults::default()
    };
    let proxy = faults::start(&moto().url, faults).await;
    let mut cmd = parts_command(&sb, url, &proxy.url, SMALL_PARTS, &["--watch", "1h"]);
    let mut child = cmd.spawn().unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(30), held)
        .await
        .expect("a ranged GET reached the proxy")
        .unwrap();
    let asked = std::time::Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::time::timeout(std::time::Duration::from_secs(10), child.wait())
        .await
        .expect("exited after SIGTERM")
        .unwrap();
    let took = asked.elapsed();
    assert_eq!(status.code(), Some(0));
    assert!(took < std::time::Duration::from_millis(900), "{took:?}");
    assert_holds(&sb.path("dest/app"), &old);
    assert_eq!(staging_left(&sb), Vec::<String>::new());
}

/// An object whose only checksum is a composite of its upload's parts (`…-N`, which covers
/// parts, not the object): in ranged parts it is verified as one GET verifies it, by its
/// size, and unpacks exactly.
#[tokio::test(flavor = "multi_thread")]
async fn a_composite_checksum_is_checked_by_size_as_for_one_get() {
    let bucket = moto().bucket("ranged-composite").await;
    let (tar, contents) = files(&[5 * MIB, 700_000], 10);
    let (first, rest) = tar.split_at(5 * MIB);
    bucket
        .put_multipart_composite_crc32("app.tar", &[first.to_vec(), rest.to_vec()])
        .await;
    let sb = Sandbox::new();
    let url = "s3://ranged-composite/app.tar";
    let out = sync_parts(&sb, url, &moto().url, SMALL_PARTS).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_holds(&sb.path("dest/app"), &contents);
    let parts = tar.len().div_ceil(MIB);
    assert!(out.stderr.contains("verified=\"size\""), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!("parts={parts}")),
        "{}",
        out.stderr
    );
}

/// A byte flipped in one part's body: the parts are hashed in order, and the whole
/// object's checksum (CRC64NVME), or a plain ETag's MD5, fails the pass (76) with nothing
/// swapped in.
#[tokio::test(flavor = "multi_thread")]
async fn a_corrupted_part_fails_the_whole_object_checksum() {
    let bucket = moto().bucket("ranged-corrupt").await;
    let (tar, _) = files(&[3 * MIB + 5], 6);
    bucket.put_crc64nvme("crc.tar", tar.clone()).await;
    bucket.put_without_checksum("md5.tar", tar).await;
    for (key, why) in [
        ("crc.tar", "the body does not match its CRC64NVME checksum"),
        ("md5.tar", "ETag says"),
    ] {
        let proxy = faults::start(
            &moto().url,
            Faults {
                corrupt_partial: AtomicUsize::new(1),
                ..Faults::default()
            },
        )
        .await;
        let sb = Sandbox::new();
        let url = format!("s3://ranged-corrupt/{key}");
        let out = sync_parts(&sb, &url, &proxy.url, SMALL_PARTS).await;
        assert_eq!(proxy.faults.injected.load(Ordering::SeqCst), 1);
        assert_exit(&out, 76, &format!("{key}: verification failed: "));
        assert!(out.stderr.contains(why), "{}", out.stderr);
        assert!(std::fs::symlink_metadata(sb.path("dest/app")).is_err());
    }
}

/// A 300 MB incompressible bundle with the default parts (8 MiB, 8 at once): the peak RSS
/// of the whole process stays under 160 MiB (the parts' 64 MiB, the channel, zstd's
/// window and the program), where holding the body would take 300 MB.
#[tokio::test(flavor = "multi_thread")]
async fn memory_stays_bounded_for_a_300_mb_bundle() {
    let bucket = moto().bucket("ranged-memory").await;
    let (tar, _) = files(&[100 * MIB, 100 * MIB, 100 * MIB], 7);
    let archive = zstd::encode_all(tar.as_slice(), 1).unwrap();
    drop(tar);
    let len = archive.len();
    bucket.put_crc64nvme("app.tar.zst", archive).await;
    let sb = Sandbox::new();
    sb.seed_sync(serde_json::json!([{
        "from": "s3://ranged-memory/app.tar.zst",
        "to": sb.path("dest/app"),
    }]));
    let rss = sb.path("rss");
    let prefix = ["/usr/bin/time", "-f", "%M", "-o", rss.to_str().unwrap()];
    let mut cmd = sb.command_under(&prefix, &["s3-sync", "--sync-timeout", "120s"]);
    cmd.envs(moto().env());
    let mark = moto().mark();
    let out = common::run(cmd).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let parts = len.div_ceil(8 * MIB);
    let counts = Counts {
        get: parts,
        head: 1,
        ..Counts::default()
    };
    assert_eq!(moto().counts("ranged-memory", mark), counts);
    let kib: u64 = std::fs::read_to_string(&rss)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    eprintln!("peak RSS of a {len}-byte bundle: {} MiB", kib / 1024);
    assert!(kib < 160 * 1024, "peak RSS {kib} KiB");
}
