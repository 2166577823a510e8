//! Sync sources from stores that speak S3 but are not S3 (#32 item 5), played by the fault
//! proxy in front of moto where they differ in what bootstage relies on:
//! - Google Cloud Storage's XML API, reached as README says (`AWS_ENDPOINT_URL_S3` by a
//!   host name, region `auto`): path-style requests to the endpoint's host, ListObjectsV2 with
//!   `encoding-type=url`, and answers with `x-goog-hash` but no `x-amz-checksum-*` (GCS
//!   ignores `x-amz-checksum-mode`): a prefix and a bundle in default parts sync byte for
//!   byte, verified by the MD5 of the plain ETag, a flipped byte is refused (76), and the
//!   bundle asked again is one 304;
//! - a server that answers a Range with 200 and the whole object (GCS when it transcodes):
//!   a bundle comes whole in its one GET;
//! - a server that serves the first range but answers the parts after it whole: refused,
//!   naming `"parts_in_flight": 1`, which then syncs it;
//! - GCS's decompressive transcoding of an object stored with `Content-Encoding: gzip`
//!   (bytes that are not the stored object's): refused (76), the old tree kept.

use crate::common;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::faults::{self, Faults};
use common::moto::{Bucket, Counts, moto};
use common::{Outcome, Sandbox, assert_exit};

const MIB: usize = 1 << 20;

/// bootstage's default part size (`Parts::default`).
const PART: usize = 8 * MIB;

fn md5(body: &[u8]) -> String {
    use md5::Digest;
    hex::encode(md5::Md5::digest(body))
}

/// A `.tar` of incompressible files of these sizes (named by index) and what each holds.
fn archive(sizes: &[usize], seed: u64) -> (Vec<u8>, BTreeMap<String, Vec<u8>>) {
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

/// A bundle larger than one default part (so it comes in ranges), version `v`.
fn large_bundle(v: u64) -> (Vec<u8>, BTreeMap<String, Vec<u8>>) {
    archive(&[PART + MIB / 2, 4096], v)
}

/// The destination holds exactly `contents`, byte for byte.
fn assert_holds(root: &std::path::Path, contents: &BTreeMap<String, Vec<u8>>) {
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
        assert!(got == *data, "{name} differs");
    }
}

/// The proxy's URL by a host name (`localhost`), as a store's is (an IP address would be
/// addressed path-style whatever the setting).
fn named(proxy: &faults::Proxy) -> String {
    proxy.url.replace("127.0.0.1", "localhost")
}

/// What moto's S3 serves through the proxy, configured as for GCS: the S3 endpoint alone
/// moved (`AWS_ENDPOINT_URL_S3`), region `auto`.
fn gcs_env(cmd: &mut tokio::process::Command, proxy: &faults::Proxy) {
    cmd.envs(moto().env())
        .env("AWS_ENDPOINT_URL_S3", named(proxy))
        .env("AWS_REGION", "auto");
}

/// `s3-sync --from url --to dest/app` through `proxy`, as for GCS.
async fn sync_from(sb: &Sandbox, url: &str, proxy: &faults::Proxy) -> Outcome {
    let to = sb.path("dest/app");
    let mut cmd = sb.command(&["s3-sync", "--from", url, "--to", to.to_str().unwrap()]);
    gcs_env(&mut cmd, proxy);
    common::run(cmd).await
}

/// One `bootstage.sync` entry of `url` into `dest/app`, with `settings` added (part
/// settings), through `proxy`.
async fn sync_entry(
    sb: &Sandbox,
    url: &str,
    proxy: &faults::Proxy,
    settings: serde_json::Value,
) -> Outcome {
    let mut entry = serde_json::json!({"from": url, "to": sb.path("dest/app")});
    for (k, v) in settings.as_object().unwrap() {
        entry[k] = v.clone();
    }
    sb.seed_sync(serde_json::json!([entry]));
    let mut cmd = sb.command(&["s3-sync", "--sync-timeout", "60s"]);
    gcs_env(&mut cmd, proxy);
    common::run(cmd).await
}

/// The object requests the proxy saw for `key`, as `METHOD`.
fn requests_of(proxy: &faults::Proxy, bucket: &Bucket, key: &str) -> Vec<String> {
    let path = format!(" /{}/{key}", bucket.name);
    proxy
        .faults
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.contains(&format!("{path}?")) || r.ends_with(&path))
        .map(|r| r.split(' ').next().unwrap().to_string())
        .collect()
}

/// The GCS-like proxy, with `faults` on top.
async fn gcs(faults: Faults) -> faults::Proxy {
    faults::start(
        &moto().url,
        Faults {
            gcs: true,
            ..faults
        },
    )
    .await
}

/// A prefix (two objects, one key that URL-encoding must carry) and a bundle in default
/// parts, from a store answering as GCS's XML API does: every request path-style
/// (`/BUCKET/KEY` on the endpoint's own host), the listing ListObjectsV2 with
/// `encoding-type=url`; no `x-amz-checksum-*` in any answer, though moto keeps the SDK's
/// CRC32, so what is verified is the MD5 of the plain ETag, over the ranged parts of the
/// bundle too; the bundle asked again is one 304. A byte flipped in flight is refused with
/// both digests named and the old tree kept, for the prefix's object and for the bundle's
/// first part.
#[tokio::test(flavor = "multi_thread")]
async fn a_gcs_like_store_syncs_a_prefix_and_a_bundle_verified_by_the_etag_md5() {
    let bucket = moto().bucket("gcs-like").await;
    let conf = b"listen = 8080\n".repeat(700);
    let odd = "conf.d/a b+c%.conf";
    bucket.put("p/app.conf", conf.clone()).await;
    bucket
        .put(&format!("p/{odd}"), b"odd = true\n".to_vec())
        .await;
    let (v1, contents1) = large_bundle(1);
    bucket.put("b/app.tar", v1.clone()).await;
    let moto_answer = bucket
        .client
        .get_object()
        .bucket(&bucket.name)
        .key("b/app.tar")
        .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
        .send()
        .await
        .unwrap();
    assert!(moto_answer.checksum_crc32().is_some(), "moto keeps a CRC32");

    // The prefix.
    let sb = Sandbox::new();
    let proxy = gcs(Faults::default()).await;
    let prefix = format!("s3://{}/p/", bucket.name);
    let out = sync_from(&sb, &prefix, &proxy).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(std::fs::read(sb.path("dest/app/app.conf")).unwrap() == conf);
    assert_eq!(
        std::fs::read_to_string(sb.path(&format!("dest/app/{odd}"))).unwrap(),
        "odd = true\n"
    );
    let url = named(&proxy);
    let host = url.strip_prefix("http://").unwrap();
    let requests = proxy.faults.requests.lock().unwrap().clone();
    assert!(!requests.is_empty());
    for r in &requests {
        let bucket_path = format!("{host} /{}", bucket.name);
        assert!(r.contains(&bucket_path), "not path-style on {host}: {r}");
    }
    let lists: Vec<_> = requests
        .iter()
        .filter(|r| r.contains("list-type=2"))
        .collect();
    assert_eq!(lists.len(), 1, "{requests:?}");
    assert!(lists[0].contains("encoding-type=url"), "{}", lists[0]);
    assert_eq!(requests_of(&proxy, &bucket, "p/app.conf"), ["GET"]);

    // A byte of the object flipped in flight: the ETag's MD5 catches it.
    let generation = std::fs::read_link(sb.path("dest/app")).unwrap();
    let conf2 = b"listen = 9090\n".repeat(700);
    bucket.put("p/app.conf", conf2.clone()).await;
    let corrupting = gcs(Faults {
        corrupt: AtomicUsize::new(1),
        ..Faults::default()
    })
    .await;
    let out = sync_from(&sb, &prefix, &corrupting).await;
    let mut flipped = conf2.clone();
    flipped[conf2.len() / 2] ^= 0x01;
    let why = format!("MD5 {}, ETag says {}", md5(&flipped), md5(&conf2));
    assert_exit(&out, 76, &format!("p/app.conf: verification failed: {why}"));
    assert_eq!(std::fs::read_link(sb.path("dest/app")).unwrap(), generation);

    // The bundle, in default parts: 0..8 MiB, then the rest pinned to the ETag.
    let sb = Sandbox::new();
    let proxy = gcs(Faults::default()).await;
    let url = format!("s3://{}/b/app.tar", bucket.name);
    let out = sync_from(&sb, &url, &proxy).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("verified=\"MD5\""), "{}", out.stderr);
    assert_holds(&sb.path("dest/app"), &contents1);
    assert_eq!(
        *proxy.faults.ranges.lock().unwrap(),
        [
            format!("bytes=0-{}", PART - 1),
            format!("bytes={PART}-{}", v1.len() - 1)
        ]
    );
    let mut asked = requests_of(&proxy, &bucket, "b/app.tar");
    asked.sort();
    assert_eq!(asked, ["GET", "GET", "HEAD"]);
    // Asked again: `If-None-Match` answered 304 (as GCS documents it), no body.
    let mark = moto().mark();
    let out = sync_from(&sb, &url, &proxy).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let not_modified = Counts {
        not_modified: 1,
        ..Counts::default()
    };
    assert_eq!(moto().counts(&bucket.name, mark), not_modified);

    // Its first part flipped in flight: the MD5 over the parts in order catches it.
    let generation = std::fs::read_link(sb.path("dest/app")).unwrap();
    let (v2, _) = large_bundle(2);
    bucket.put("b/app.tar", v2.clone()).await;
    let corrupting = gcs(Faults {
        corrupt_partial: AtomicUsize::new(1),
        ..Faults::default()
    })
    .await;
    let out = sync_from(&sb, &url, &corrupting).await;
    let mut flipped = v2.clone();
    flipped[PART / 2] ^= 0x01;
    let why = format!("MD5 {}, ETag says {}", md5(&flipped), md5(&v2));
    assert_exit(&out, 76, &format!("b/app.tar: verification failed: {why}"));
    assert_eq!(corrupting.faults.injected.load(Ordering::SeqCst), 1);
    assert_eq!(std::fs::read_link(sb.path("dest/app")).unwrap(), generation);
    assert_holds(&sb.path("dest/app"), &contents1);
}

/// A server that answers a Range with 200 and the whole object (as GCS does for an object
/// it transcodes, and some gateways always): the bundle's first GET, which asked for the
/// first part only, is the whole bundle, taken as it is: one GET, no ranged part, no HEAD,
/// unpacked byte for byte and verified by its ETag's MD5.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_answers_200_to_a_range_gives_a_bundle_in_one_get() {
    let bucket = moto().bucket("range-ignored").await;
    let (body, contents) = large_bundle(3);
    bucket.put("b/app.tar", body).await;
    let sb = Sandbox::new();
    let proxy = gcs(Faults {
        ignore_range: true,
        ..Faults::default()
    })
    .await;
    let url = format!("s3://{}/b/app.tar", bucket.name);
    let out = sync_from(&sb, &url, &proxy).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("verified=\"MD5\""), "{}", out.stderr);
    assert_holds(&sb.path("dest/app"), &contents);
    assert_eq!(
        *proxy.faults.ranges.lock().unwrap(),
        [format!("bytes=0-{}", PART - 1)]
    );
    assert_eq!(requests_of(&proxy, &bucket, "b/app.tar"), ["GET"]);
}

/// A server that serves the first range but answers the ranged GETs after it with the
/// whole object: a part that is not the range asked for is refused (76) before a byte of
/// it is used, the message naming the setting that fetches the bundle as one stream, and
/// the old tree stays. With `"parts_in_flight": 1`, as it says, the bundle syncs: one GET,
/// no Range.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_serves_only_the_first_range_is_refused_naming_parts_in_flight() {
    let bucket = moto().bucket("first-range-only").await;
    let (v1, contents1) = large_bundle(4);
    bucket.put("b/app.tar", v1).await;
    let url = format!("s3://{}/b/app.tar", bucket.name);
    let first_only = || Faults {
        ignore_pinned_range: true,
        ..Faults::default()
    };

    let sb = Sandbox::new();
    let proxy = gcs(first_only()).await;
    let one = serde_json::json!({"parts_in_flight": 1});
    let out = sync_entry(&sb, &url, &proxy, one.clone()).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_holds(&sb.path("dest/app"), &contents1);
    assert!(proxy.faults.ranges.lock().unwrap().is_empty());
    assert_eq!(requests_of(&proxy, &bucket, "b/app.tar"), ["GET"]);
    let generation = std::fs::read_link(sb.path("dest/app")).unwrap();

    let (v2, contents2) = large_bundle(5);
    let size = v2.len();
    bucket.put("b/app.tar", v2).await;
    let proxy = gcs(first_only()).await;
    let out = sync_entry(&sb, &url, &proxy, serde_json::json!({})).await;
    let why = format!(
        "asked for bytes {PART}-{}/{size}, answered the whole object: a server that does not \
         serve byte ranges needs \"parts_in_flight\": 1",
        size - 1
    );
    assert_exit(&out, 76, &format!("b/app.tar: verification failed: {why}"));
    assert_eq!(std::fs::read_link(sb.path("dest/app")).unwrap(), generation);
    assert_holds(&sb.path("dest/app"), &contents1);

    let proxy = gcs(first_only()).await;
    let out = sync_entry(&sb, &url, &proxy, one).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_holds(&sb.path("dest/app"), &contents2);
    assert!(proxy.faults.ranges.lock().unwrap().is_empty());
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

/// GCS's decompressive transcoding: an object stored gzip-compressed with
/// `Content-Encoding: gzip` is served gunzipped to a GET without `Accept-Encoding: gzip`
/// (bootstage sends none), Range ignored, without Content-Length: bytes that are not the
/// stored object's, whose size and ETag describe the compressed form. A prefix's object
/// is refused as longer than listed, a bundle as longer than its HEAD announced (76),
/// and the old tree stays in both.
#[tokio::test(flavor = "multi_thread")]
async fn gcs_decompressive_transcoding_is_refused_with_the_old_tree_kept() {
    let bucket = moto().bucket("gcs-transcode").await;
    let conf = b"workers = 4\n".repeat(500);
    let (tar, _) = archive(&[64 * 1024], 6);
    for (url, key, plain) in [
        (format!("s3://{}/p/", bucket.name), "p/app.conf", conf),
        (format!("s3://{}/b/app.tar", bucket.name), "b/app.tar", tar),
    ] {
        bucket.put(key, plain.clone()).await;
        let sb = Sandbox::new();
        let clean = gcs(Faults::default()).await;
        let out = sync_from(&sb, &url, &clean).await;
        assert_eq!(out.code, 0, "{key}: {}", out.stderr);
        let generation = std::fs::read_link(sb.path("dest/app")).unwrap();

        let stored = gzip(&plain);
        bucket.put(key, stored.clone()).await;
        let transcoding = gcs(Faults {
            transcode_gzip: true,
            ..Faults::default()
        })
        .await;
        let out = sync_from(&sb, &url, &transcoding).await;
        let why = match key {
            "p/app.conf" => format!("the body is longer than the {} bytes listed", stored.len()),
            // No Content-Length: the size is the HEAD's, the stored (compressed) one.
            _ => format!(
                "the body is longer than the {} bytes announced",
                stored.len()
            ),
        };
        assert_exit(&out, 76, &format!("{key}: verification failed: {why}"));
        assert!(
            transcoding.faults.injected.load(Ordering::SeqCst) >= 1,
            "{key}"
        );
        assert_eq!(
            std::fs::read_link(sb.path("dest/app")).unwrap(),
            generation,
            "{key}"
        );
    }
}

/// A server that sends an object's body without Content-Length (chunked, as HTTP allows):
/// a prefix's object is checked against its listed size and syncs; a bundle takes its
/// size from a HEAD (a whole body) or its Content-Range (a part) and syncs the same, in
/// one GET or in parts.
#[tokio::test(flavor = "multi_thread")]
async fn a_bundle_answered_without_content_length_syncs() {
    let bucket = moto().bucket("chunked").await;
    let (body, contents) = archive(&[64 * 1024], 7);
    bucket.put("b/app.tar", body).await;
    bucket.put("p/app.conf", b"a = 1\n".to_vec()).await;
    let chunked = || Faults {
        chunked: true,
        ..Faults::default()
    };
    let sb = Sandbox::new();
    let proxy = gcs(chunked()).await;
    let out = sync_from(&sb, &format!("s3://{}/p/", bucket.name), &proxy).await;
    assert_eq!(out.code, 0, "prefix: {}", out.stderr);
    for parts in [
        serde_json::json!({"parts_in_flight": 1}),
        serde_json::json!({}),
        // In parts: the first answer a 206 whose length is its Content-Range's.
        serde_json::json!({"part_size": 65536, "parts_above": 65536}),
    ] {
        let sb = Sandbox::new();
        let proxy = gcs(chunked()).await;
        let url = format!("s3://{}/b/app.tar", bucket.name);
        let out = sync_entry(&sb, &url, &proxy, parts.clone()).await;
        assert_eq!(out.code, 0, "{parts}: {}", out.stderr);
        assert_holds(&sb.path("dest/app"), &contents);
    }
}

/// A server that ignores `encoding-type=url` lists keys raw (and says no `EncodingType`):
/// a key with `+` or `%` must still be synced under its own name.
#[tokio::test(flavor = "multi_thread")]
async fn keys_listed_raw_by_a_server_that_ignores_encoding_type_sync_as_named() {
    let bucket = moto().bucket("raw-keys").await;
    bucket.put("p/a+b.conf", b"plus\n".to_vec()).await;
    bucket.put("p/100%.conf", b"percent\n".to_vec()).await;
    let sb = Sandbox::new();
    let proxy = gcs(Faults {
        ignore_encoding_type: true,
        ..Faults::default()
    })
    .await;
    let to = sb.path("dest/app");
    let from = format!("s3://{}/p/", bucket.name);
    let mut cmd = sb.command(&[
        "s3-sync",
        "--sync-timeout",
        "8s",
        "--from",
        &from,
        "--to",
        to.to_str().unwrap(),
    ]);
    gcs_env(&mut cmd, &proxy);
    let out = common::run(cmd).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        std::fs::read_to_string(sb.path("dest/app/a+b.conf")).unwrap(),
        "plus\n"
    );
    assert_eq!(
        std::fs::read_to_string(sb.path("dest/app/100%.conf")).unwrap(),
        "percent\n"
    );
}
