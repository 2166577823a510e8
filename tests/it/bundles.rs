//! Bundles: one archive per destination, against moto on 127.0.0.1 (and the fault proxy
//! in front of it): unpacked byte for byte, fetched once and then only asked about,
//! verified, pinned, refused when hostile, atomic under SIGKILL. Tables of crafted archives
//! (from file://) are held to the trees Python's tarfile lists and GNU tar extracts, or
//! must be refused; names are capped and the manifest charged on a small tmpfs.

use crate::common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::faults::{self, Faults};
use common::moto::{Counts, moto};
use common::{Outcome, Sandbox, assert_exit};

/// One archive entry, written as raw header fields: names and types a careful builder
/// would refuse are exactly what these tests need.
enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8], u32),
    Link(&'a str, &'a str),
    /// Any type flag, with a link name.
    Raw(&'a str, u8, &'a str),
}

fn header(name: &str, kind: u8, link: &str, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_old();
    let old = h.as_old_mut();
    old.name[..name.len()].copy_from_slice(name.as_bytes());
    old.linkname[..link.len()].copy_from_slice(link.as_bytes());
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(4321);
    h.set_gid(4321);
    h.set_mtime(1_700_000_000);
    // The byte itself: `EntryType::new(0)` would write '0', not the old NUL type.
    h.as_old_mut().linkflag = [kind];
    h.set_cksum();
    h
}

/// A raw entry of any type with `data` (an extension record: `L`, `x`).
fn raw_entry(b: &mut tar::Builder<Vec<u8>>, name: &str, kind: u8, data: &[u8]) {
    let h = header(name, kind, "", data.len() as u64, 0o644);
    b.append(&h, data).unwrap();
}

/// A PAX record: `"<len> key=value\n"`, its length counting itself.
fn pax_record(key: &str, value: &str) -> Vec<u8> {
    let body = format!(" {key}={value}\n");
    let mut len = body.len() + 1;
    while format!("{len}{body}").len() != len {
        len += 1;
    }
    format!("{len}{body}").into_bytes()
}

fn tar_of(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let (h, data): (tar::Header, &[u8]) = match e {
            E::Dir(name) => (header(name, b'5', "", 0, 0o700), b""),
            E::File(name, data, mode) => (header(name, b'0', "", data.len() as u64, *mode), data),
            E::Link(name, target) => (header(name, b'2', target, 0, 0o777), b""),
            E::Raw(name, kind, link) => (header(name, *kind, link, 0, 0o644), b""),
        };
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Tar,
    Gz,
    Zst,
}

impl Kind {
    fn ext(self) -> &'static str {
        match self {
            Kind::Tar => "tar",
            Kind::Gz => "tar.gz",
            Kind::Zst => "tar.zst",
        }
    }

    fn pack(self, tar: &[u8]) -> Vec<u8> {
        use std::io::Write;
        match self {
            Kind::Tar => tar.to_vec(),
            Kind::Gz => {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), Default::default());
                gz.write_all(tar).unwrap();
                gz.finish().unwrap()
            }
            Kind::Zst => zstd::encode_all(tar, 3).unwrap(),
        }
    }
}

/// What the destination holds, through its symlink: every entry with its type, mode and
/// contents (or target).
fn listing(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let mode = meta.permissions().mode() & 0o7777;
            let what = if meta.is_symlink() {
                format!("link {}", std::fs::read_link(&path).unwrap().display())
            } else if meta.is_dir() {
                stack.push(path);
                format!("dir {mode:o}")
            } else {
                let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
                format!("file {mode:o} {text}")
            };
            out.insert(rel, what);
        }
    }
    out
}

fn expect(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The app as a build would tar it (`tar -C build .`): `./` names, an empty directory,
/// an executable, a setuid bit, a private file, an internal relative symlink, and
/// directories that appear only in the files' names.
fn app(version: &str) -> Vec<u8> {
    let conf = format!("version={version}\n");
    tar_of(&[
        E::Dir("./"),
        E::Dir("./bin/"),
        E::File("./bin/run", b"#!/bin/sh\necho run\n", 0o755),
        E::File("./bin/setuid", b"x", 0o4755),
        E::Dir("./empty/"),
        E::File("./etc/nested/deep/app.conf", conf.as_bytes(), 0o600),
        E::Link("./bin/conf", "../etc/nested/deep/app.conf"),
    ])
}

fn app_listing(version: &str) -> BTreeMap<String, String> {
    let conf = format!("file 644 version={version}\n");
    expect(&[
        ("bin", "dir 755"),
        ("bin/run", "file 755 #!/bin/sh\necho run\n"),
        ("bin/setuid", "file 755 x"),
        ("bin/conf", "link ../etc/nested/deep/app.conf"),
        ("empty", "dir 755"),
        ("etc", "dir 755"),
        ("etc/nested", "dir 755"),
        ("etc/nested/deep", "dir 755"),
        ("etc/nested/deep/app.conf", &conf),
    ])
}

async fn sync_from(sb: &Sandbox, url: &str, endpoint: &str, extra: &[&str]) -> Outcome {
    let to = sb.path("dest/app");
    let mut args = vec!["s3-sync", "--from", url, "--to", to.to_str().unwrap()];
    args.extend_from_slice(extra);
    let mut cmd = sb.command(&args);
    cmd.envs(moto().env()).env("AWS_ENDPOINT_URL", endpoint);
    common::run(cmd).await
}

async fn sync(sb: &Sandbox, url: &str, extra: &[&str]) -> Outcome {
    sync_from(sb, url, &moto().url, extra).await
}

fn counts(get: usize, not_modified: usize) -> Counts {
    Counts {
        get,
        not_modified,
        ..Counts::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn each_format_unpacks_byte_for_byte_with_one_get_then_none() {
    let bucket = moto().bucket("bundles").await;
    for kind in [Kind::Tar, Kind::Gz, Kind::Zst] {
        let key = format!("releases/app.{}", kind.ext());
        let url = format!("s3://bundles/{key}");
        bucket.put(&key, kind.pack(&app("1"))).await;
        let sb = Sandbox::new();
        let mark = moto().mark();
        let out = sync(&sb, &url, &[]).await;
        assert_eq!(out.code, 0, "{kind:?}: {}", out.stderr);
        assert_eq!(listing(&sb.path("dest/app")), app_listing("1"), "{kind:?}");
        assert_eq!(moto().counts("bundles", mark), counts(1, 0), "{kind:?}");

        let mark = moto().mark();
        let out = sync(&sb, &url, &[]).await;
        assert_eq!(out.code, 0, "{kind:?}: {}", out.stderr);
        assert_eq!(moto().counts("bundles", mark), counts(0, 1), "{kind:?}");
        assert!(
            out.stderr.contains("0 downloaded, 0 swapped in"),
            "{}",
            out.stderr
        );
    }
    // A new object at the same key is a new release.
    bucket
        .put("releases/app.tar.zst", Kind::Zst.pack(&app("2")))
        .await;
    let sb = Sandbox::new();
    assert_eq!(
        sync(&sb, "s3://bundles/releases/app.tar.zst", &[])
            .await
            .code,
        0
    );
    assert_eq!(listing(&sb.path("dest/app")), app_listing("2"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_local_archive_file_works_the_same_for_a_vm() {
    let sb = Sandbox::new();
    let file = sb.path("app.tar.gz");
    std::fs::write(&file, Kind::Gz.pack(&app("local"))).unwrap();
    let url = format!("file://{}", file.display());
    let out = sync(&sb, &url, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(listing(&sb.path("dest/app")), app_listing("local"));
    let out = sync(&sb, &url, &[]).await;
    assert!(
        out.stderr.contains("0 downloaded, 0 swapped in"),
        "{}",
        out.stderr
    );
}

/// A file edited, a symlink pointed elsewhere or a directory removed in the tree: the
/// next run fetches the archive again (one GET, not a 304) and the tree is as released.
/// The symlink and the directory were not checked before (a 304, and the damage stayed).
#[tokio::test(flavor = "multi_thread")]
async fn a_touched_tree_is_fetched_again() {
    let bucket = moto().bucket("touched").await;
    bucket.put("app.tar", app("1")).await;
    let sb = Sandbox::new();
    assert_eq!(sync(&sb, "s3://touched/app.tar", &[]).await.code, 0);
    let tree = sb.path("dest/app");
    let damage: [(&str, &dyn Fn()); 3] = [
        ("a file edited", &|| {
            std::fs::write(tree.join("bin/run"), "edited").unwrap()
        }),
        // The same length as `../etc/nested/deep/app.conf`: the seal's inode and ctime
        // catch it, not its size.
        ("a symlink replaced", &|| {
            std::fs::remove_file(tree.join("bin/conf")).unwrap();
            let target = format!("/etc{}passwd", "/".repeat(17));
            std::os::unix::fs::symlink(target, tree.join("bin/conf")).unwrap();
        }),
        ("a directory removed", &|| {
            std::fs::remove_dir(tree.join("empty")).unwrap()
        }),
    ];
    for (what, damage) in damage {
        damage();
        let mark = moto().mark();
        assert_eq!(
            sync(&sb, "s3://touched/app.tar", &[]).await.code,
            0,
            "{what}"
        );
        assert_eq!(moto().counts("touched", mark), counts(1, 0), "{what}");
        assert_eq!(listing(&tree), app_listing("1"), "{what}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pinned_sha256_admits_only_those_bytes() {
    use sha2::Digest;
    let bucket = moto().bucket("pinned").await;
    let v1 = Kind::Zst.pack(&app("1"));
    let pin = hex::encode(sha2::Sha256::digest(&v1));
    bucket.put("app.tar.zst", v1).await;
    let sb = Sandbox::new();
    let url = "s3://pinned/app.tar.zst";
    let out = sync(&sb, url, &["--sha256", &pin]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("verified=\"CRC32+SHA-256\""),
        "{}",
        out.stderr
    );
    let mark = moto().mark();
    assert_eq!(sync(&sb, url, &["--sha256", &pin]).await.code, 0);
    assert_eq!(moto().counts("pinned", mark), counts(0, 1));

    // Someone replaces the object: user-data still names the old bytes.
    let v2 = Kind::Zst.pack(&app("2"));
    let got = hex::encode(sha2::Sha256::digest(&v2));
    bucket.put("app.tar.zst", v2).await;
    let out = sync(&sb, url, &["--sha256", &pin]).await;
    assert_exit(
        &out,
        76,
        &format!(
            "app.tar.zst: verification failed: its SHA-256 is {got}, the entry pins {pin}: not the archive it names"
        ),
    );
    assert_eq!(listing(&sb.path("dest/app")), app_listing("1"));
    let out = sync(&sb, url, &["--sha256", "abc"]).await;
    assert_exit(
        &out,
        65,
        "s3://pinned/app.tar.zst: \"sha256\" must be 64 hex digits",
    );
}

/// The names the hostile archives aim at, relative to the sandbox: none may exist after.
const VICTIMS: &[&str] = &["victim", "dest/victim", "outside/pwned", "x"];

async fn refused(name: &str, archive: Vec<u8>, entry: &str, why: &str) {
    let bucket = moto().bucket(&format!("hostile-{name}")).await;
    bucket.put("evil.tar.zst", archive).await;
    let sb = Sandbox::new();
    std::fs::create_dir(sb.path("outside")).unwrap();
    let out = sync(&sb, &format!("s3://hostile-{name}/evil.tar.zst"), &[]).await;
    assert_exit(&out, 65, &format!("archive entry {entry:?} refused: {why}"));
    assert!(
        std::fs::symlink_metadata(sb.path("dest/app")).is_err(),
        "{name}"
    );
    let home: Vec<String> = std::fs::read_dir(sb.path("dest/.app.bootstage"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(home, [".lock"], "{name}: the staging generation is gone");
    for victim in VICTIMS {
        assert!(
            std::fs::symlink_metadata(sb.path(victim)).is_err(),
            "{name}: {victim} was written"
        );
    }
    assert_eq!(std::fs::read_dir(sb.path("outside")).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_archives_are_refused_naming_the_entry() {
    let sb_root = Sandbox::new();
    let absolute = sb_root.path("victim").display().to_string();
    let zst = |entries: &[E]| Kind::Zst.pack(&tar_of(entries));
    let cases: Vec<(&str, Vec<u8>, String, &str)> = vec![
        (
            "absolute",
            zst(&[E::File(&absolute, b"x", 0o644)]),
            absolute.clone(),
            "it is an absolute path",
        ),
        (
            "dotdot",
            zst(&[
                E::File("ok", b"x", 0o644),
                E::File("../../victim", b"x", 0o644),
            ]),
            "../../victim".into(),
            "it has a '.' or '..' segment",
        ),
        (
            "through-link",
            zst(&[
                E::Link("evil", "../../../outside"),
                E::File("evil/pwned", b"x", 0o644),
            ]),
            "evil/pwned".into(),
            "it would be written through the symlink \"evil\"",
        ),
        (
            "escaping-link",
            zst(&[E::Link("up", "../../x")]),
            "up".into(),
            "its symlink target \"../../x\" leads outside the destination",
        ),
        (
            // Inside by its letters, outside once `s` is followed as the kernel will.
            "link-via-link",
            zst(&[
                E::Dir("t/"),
                E::Dir("deep/a/b/"),
                E::Link("deep/a/b/s", "../../../t"),
                E::Link("deep/a/b/l", "s/../../../../x"),
            ]),
            "deep/a/b/l".into(),
            "its symlink target \"s/../../../../x\" leads outside the destination",
        ),
        (
            "absolute-link",
            zst(&[E::Link("etc", "/etc")]),
            "etc".into(),
            "its symlink target \"/etc\" leads outside the destination",
        ),
        (
            "hard-link",
            zst(&[E::File("a", b"x", 0o644), E::Raw("hard", b'1', "a")]),
            "hard".into(),
            "hard links are not unpacked",
        ),
        (
            "device",
            zst(&[E::Raw("dev/sda", b'4', "")]),
            "dev/sda".into(),
            "device nodes and FIFOs are not unpacked",
        ),
        (
            "fifo",
            zst(&[E::Raw("pipe", b'6', "")]),
            "pipe".into(),
            "device nodes and FIFOs are not unpacked",
        ),
        (
            "twice",
            zst(&[E::File("a", b"1", 0o644), E::Link("a", "b")]),
            "a".into(),
            "the name appears twice in the archive",
        ),
        (
            "bomb",
            zero_bomb(),
            "zeros".into(),
            "the archive unpacks to more than 8589934592 bytes (max_bytes)",
        ),
        (
            // The tar crate would read any size of long name into memory.
            "long-name",
            {
                let mut b = tar::Builder::new(Vec::new());
                raw_entry(&mut b, "././@LongLink", b'L', &vec![b'a'; 100_000]);
                raw_entry(&mut b, "short", b'0', b"");
                Kind::Zst.pack(&b.into_inner().unwrap())
            },
            "././@LongLink".into(),
            "its extension record holds 100000 bytes, more than 65536",
        ),
        (
            // Two parsers that disagree on a size see two different archives.
            "pax-size",
            {
                let mut b = tar::Builder::new(Vec::new());
                raw_entry(&mut b, "PaxHeaders/f", b'x', &pax_record("size", "1024"));
                raw_entry(&mut b, "f", b'0', b"");
                Kind::Zst.pack(&b.into_inner().unwrap())
            },
            "f".into(),
            "its PAX size disagrees with its header",
        ),
        (
            // A PAX path is the entry's name, and is judged like any other.
            "pax-path",
            {
                let mut b = tar::Builder::new(Vec::new());
                raw_entry(
                    &mut b,
                    "PaxHeaders/f",
                    b'x',
                    &pax_record("path", "../../victim"),
                );
                raw_entry(&mut b, "harmless", b'0', b"");
                Kind::Zst.pack(&b.into_inner().unwrap())
            },
            "../../victim".into(),
            "it has a '.' or '..' segment",
        ),
        (
            // 129 levels, the name in a GNU long-name record as tar writes it.
            "deep",
            {
                let mut b = tar::Builder::new(Vec::new());
                let name = "d/".repeat(129);
                raw_entry(&mut b, "././@LongLink", b'L', name.as_bytes());
                raw_entry(&mut b, "d/d/d", b'5', b"");
                Kind::Zst.pack(&b.into_inner().unwrap())
            },
            "d/".repeat(129),
            "its name is longer than 4095 bytes or deeper than 128",
        ),
    ];
    for (name, archive, entry, why) in cases {
        refused(name, archive, &entry, why).await;
    }
}

/// 10 GB of zeros in one entry, zstd-compressed: a few hundred KiB on the wire.
fn zero_bomb() -> Vec<u8> {
    use std::io::Write;
    let size: u64 = 10_000_000_000;
    let mut z = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
    z.write_all(header("zeros", b'0', "", size, 0o644).as_bytes())
        .unwrap();
    let zeros = vec![0u8; 8 << 20];
    let mut left = size + 1024; // the entry, its padding and the end blocks
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        z.write_all(&zeros[..n]).unwrap();
        left -= n as u64;
    }
    z.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn empty_prefixes_and_missing_archives_fail_unless_allowed() {
    let bucket = moto().bucket("empties").await;
    bucket.put("other/x", "x").await;
    let sb = Sandbox::new();
    let out = sync(&sb, "s3://empties/typo/", &[]).await;
    assert_exit(
        &out,
        66,
        "s3://empties/typo/: no objects under it; if it may be empty, say \"allow_empty\": true in its bootstage.sync entry",
    );
    let out = sync(&sb, "s3://empties/app.tar.zst", &[]).await;
    assert_exit(&out, 66, "s3://empties/app.tar.zst: no such archive;");
    assert!(std::fs::symlink_metadata(sb.path("dest/app")).is_err());
    let out = sync(&sb, "s3://empties/app.tar.zst", &["--allow-empty-source"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(listing(&sb.path("dest/app")), BTreeMap::new());
    let out = sync(&sb, "s3://empties/typo/", &["--allow-empty-source"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(listing(&sb.path("dest/app")), BTreeMap::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cut_download_is_fetched_again_and_verified() {
    let bucket = moto().bucket("cut-bundle").await;
    bucket.put("app.tar.gz", Kind::Gz.pack(&app("1"))).await;
    let proxy = faults::start(
        &moto().url,
        Faults {
            cut: AtomicUsize::new(1),
            ..Faults::default()
        },
    )
    .await;
    let sb = Sandbox::new();
    let out = sync_from(&sb, "s3://cut-bundle/app.tar.gz", &proxy.url, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(proxy.faults.injected.load(Ordering::SeqCst), 1);
    assert_eq!(listing(&sb.path("dest/app")), app_listing("1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupted_body_is_caught_by_its_checksum() {
    let bucket = moto().bucket("corrupt").await;
    bucket.put("b/app.tar", app("1")).await;
    // A multipart object with a full-object CRC32: no MD5 in its ETag to check.
    let part1: Vec<u8> = (0..5 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let part2 = b"tail".to_vec();
    bucket
        .put_multipart_crc32("p/big.bin", &[part1.clone(), part2.clone()])
        .await;
    for (url, key) in [
        ("s3://corrupt/b/app.tar", "b/app.tar"),
        ("s3://corrupt/p/", "p/big.bin"),
    ] {
        let proxy = faults::start(
            &moto().url,
            Faults {
                corrupt: AtomicUsize::new(100),
                ..Faults::default()
            },
        )
        .await;
        let sb = Sandbox::new();
        let out = sync_from(&sb, url, &proxy.url, &[]).await;
        assert_exit(
            &out,
            76,
            &format!("{key}: verification failed: the body does not match its CRC32 checksum"),
        );
        assert!(std::fs::symlink_metadata(sb.path("dest/app")).is_err());
    }
    let sb = Sandbox::new();
    let out = sync(&sb, "s3://corrupt/p/", &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        std::fs::read(sb.path("dest/app/big.bin")).unwrap(),
        [part1, part2].concat()
    );
}

/// Where a round of the SIGKILL test kills the sync.
#[derive(Clone, Copy, Debug)]
enum KillAt {
    /// Once the tree being built (`staging-…`) holds this many of the 2,000 files.
    Unpacked(usize),
    /// This many ms after moto has sent the whole archive: the last files unpacked, the
    /// tree fsynced and swapped in, or just after.
    Finishing(u64),
    /// The moment the destination's symlink points elsewhere: after the swap, while the
    /// old generation is removed and the new one sealed.
    Swapped,
}

/// Regular files under the `staging-…` directories of `home` (none once it is swapped in).
fn staged_files(home: &Path) -> usize {
    let mut count = 0;
    let mut stack: Vec<_> = std::fs::read_dir(home)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("staging-"))
        .map(|e| e.path())
        .collect();
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(entry.path()),
                Ok(t) if t.is_file() => count += 1,
                _ => {}
            }
        }
    }
    count
}

/// SIGKILL at chosen points while a 2,000-file archive unpacks (by what the staging tree,
/// moto and the destination show, not by the clock): the destination is always the
/// complete old tree or the complete new one. A kill mid-unpack leaves the old tree and a
/// kill after the swap the new one; most rounds must really die of signal 9 while syncing,
/// and both outcomes must occur, or the test would only check syncs that finished.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_while_unpacking_leaves_a_complete_old_or_new_tree() {
    use common::kill;
    const BUCKET: &str = "killed-bundle";
    let bucket = moto().bucket(BUCKET).await;
    let version = |v: usize| -> (Vec<u8>, BTreeMap<String, String>) {
        let files: Vec<(String, Vec<u8>)> = (0..2000)
            .map(|i| {
                (
                    format!("d{}/f{i}", i % 20),
                    format!("v{v}-{i}-").repeat(40 + v).into_bytes(),
                )
            })
            .collect();
        let entries: Vec<E> = files.iter().map(|(n, b)| E::File(n, b, 0o644)).collect();
        let mut want = BTreeMap::new();
        for d in 0..20 {
            want.insert(format!("d{d}"), "dir 755".to_string());
        }
        for (n, b) in &files {
            want.insert(
                n.clone(),
                format!("file 644 {}", String::from_utf8_lossy(b)),
            );
        }
        (Kind::Zst.pack(&tar_of(&entries)), want)
    };
    let versions = [version(0), version(1)];
    bucket.put("app.tar.zst", versions[0].0.clone()).await;
    let sb = Sandbox::new();
    let url = "s3://killed-bundle/app.tar.zst";
    assert_eq!(sync(&sb, url, &[]).await.code, 0);
    let to = sb.path("dest/app");
    let home = sb.path("dest/.app.bootstage");
    let mut rng = fastrand::Rng::with_seed(11);
    let rounds = 16;
    // (where, killed, kept the old tree) per round.
    let mut results = Vec::new();
    for round in 0..rounds {
        let v = (round + 1) % 2;
        bucket.put("app.tar.zst", versions[v].0.clone()).await;
        let at = match round % 4 {
            0 | 1 => KillAt::Unpacked(rng.usize(1..2000)),
            2 => KillAt::Finishing(rng.u64(0..20)),
            _ => KillAt::Swapped,
        };
        let mark = moto().mark();
        let before = std::fs::read_link(&to).unwrap();
        let mut cmd = sb.command(&["s3-sync", "--from", url, "--to", to.to_str().unwrap()]);
        cmd.envs(moto().env());
        let mut running = kill::start(cmd);
        let reached = match at {
            KillAt::Finishing(ms) => {
                let reached = tokio::task::spawn_blocking(move || {
                    moto().wait_for(BUCKET, mark, kill::POINT_WAIT, |c| c.get >= 1)
                })
                .await
                .unwrap();
                tokio::time::sleep(Duration::from_millis(ms)).await;
                reached
            }
            KillAt::Unpacked(n) => running.until(|| staged_files(&home) >= n).await,
            KillAt::Swapped => {
                running
                    .until(|| std::fs::read_link(&to).is_ok_and(|now| now != before))
                    .await
            }
        };
        let killed = running.kill(reached, round, &at).await;
        let got = listing(&to);
        let old = got == versions[1 - v].1;
        assert!(
            old || got == versions[v].1,
            "round {round}, {at:?}: a mixed or partial tree of {} entries",
            got.len()
        );
        if killed {
            match at {
                KillAt::Unpacked(_) => assert!(old, "round {round}: {at:?} kept the new tree"),
                KillAt::Swapped => assert!(!old, "round {round}: {at:?} kept the old tree"),
                KillAt::Finishing(_) => {}
            }
        }
        results.push((at, killed, old));
        let out = sync(&sb, url, &[]).await;
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert_eq!(listing(&to), versions[v].1);
    }
    kill::assert_most_died_mid_sync(&results);
}

/// The configured sync (`bootstage.sync` = `entries`), parameters seeded as the metadata
/// stage would have written them.
async fn sync_configured(sb: &Sandbox, entries: serde_json::Value) -> Outcome {
    sb.seed_sync(entries);
    let mut cmd = sb.command(&["s3-sync", "--sync-timeout", "20s"]);
    cmd.envs(moto().env());
    common::run(cmd).await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_entry_sets_owner_modes_pin_and_caps() {
    use sha2::Digest;
    use std::os::unix::fs::MetadataExt;
    let bucket = moto().bucket("entry").await;
    let archive = Kind::Gz.pack(&app("1"));
    let pin = hex::encode(sha2::Sha256::digest(&archive));
    bucket.put("app.tgz", archive).await;
    let sb = Sandbox::new();
    let to = sb.path("dest/app");
    let entry = |extra: serde_json::Value| {
        let mut e = serde_json::json!({
            "from": "s3://entry/app.tgz",
            "to": to,
            "owner": "nobody",
            "group": "nogroup",
            "file_mode": "0640",
            "dir_mode": "0750",
        });
        e.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::json!([e])
    };
    let out = sync_configured(&sb, entry(serde_json::json!({"max_entries": 3}))).await;
    assert_exit(
        &out,
        65,
        "archive entry \"./bin/setuid\" refused: the archive has more than 3 entries (max_entries)",
    );
    let out = sync_configured(&sb, entry(serde_json::json!({"max_bytes": 20}))).await;
    assert_exit(
        &out,
        65,
        "archive entry \"./etc/nested/deep/app.conf\" refused: the archive unpacks to more than 20 bytes (max_bytes)",
    );
    assert!(std::fs::symlink_metadata(&to).is_err());
    let out = sync_configured(&sb, entry(serde_json::json!({"sha256": pin}))).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let mode = |rel: &str| std::fs::symlink_metadata(to.join(rel)).unwrap().mode() & 0o7777;
    let owner = |rel: &str| {
        let m = std::fs::symlink_metadata(to.join(rel)).unwrap();
        (m.uid(), m.gid())
    };
    assert_eq!(
        [
            mode("bin/run"),
            mode("bin/setuid"),
            mode("etc/nested/deep/app.conf"),
            mode("empty"),
            mode(".")
        ],
        [0o750, 0o750, 0o640, 0o750, 0o750]
    );
    for rel in [
        ".",
        "bin",
        "bin/run",
        "bin/conf",
        "empty",
        "etc/nested/deep/app.conf",
    ] {
        assert_eq!(owner(rel), (65534, 65534), "{rel}");
    }
    let out = sync_configured(
        &sb,
        entry(serde_json::json!({"sha256": pin, "max_bytes": 1})),
    )
    .await;
    assert_eq!(
        out.code, 0,
        "unchanged: nothing fetched, nothing unpacked: {}",
        out.stderr
    );
    // Other modes are another version of the tree: unpacked again, not a 304.
    let mark = moto().mark();
    let mut other = entry(serde_json::json!({"sha256": pin}));
    other[0]["file_mode"] = serde_json::json!("0600");
    let out = sync_configured(&sb, other).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(moto().counts("entry", mark), counts(1, 0));
    assert_eq!(mode("etc/nested/deep/app.conf"), 0o600);
    let out = sync_configured(
        &sb,
        serde_json::json!([{"from": "s3://entry/p/", "to": to, "sha256": pin}]),
    )
    .await;
    assert_exit(
        &out,
        65,
        "s3://entry/p/: \"sha256\", \"max_entries\" and \"max_bytes\" are for an archive source",
    );
}

/// Watch mode with a bundle: each quiet interval is one conditional GET answered 304; a
/// new release is swapped in and the hook run once.
#[tokio::test(flavor = "multi_thread")]
async fn watch_mode_asks_about_a_bundle_and_swaps_a_new_release() {
    use std::os::unix::net::UnixDatagram;
    let bucket = moto().bucket("watched-bundle").await;
    bucket.put("app.tar.zst", Kind::Zst.pack(&app("1"))).await;
    let sb = Sandbox::new();
    let socket_path = sb.path("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let to = sb.path("dest/app");
    let hook_log = sb.path("hook.log");
    let hook = format!(
        "echo \"changed $BOOTSTAGE_CHANGED\" >> {}",
        hook_log.display()
    );
    let mut cmd = sb.command(&[
        "s3-sync",
        "--from",
        "s3://watched-bundle/app.tar.zst",
        "--to",
        to.to_str().unwrap(),
        "--watch",
        "150ms",
        "--on-change",
        &hook,
    ]);
    cmd.envs(moto().env()).env("NOTIFY_SOCKET", &socket_path);
    let mut child = cmd.spawn().unwrap();
    common::next_notification(&socket, "READY=1");
    assert_eq!(listing(&to), app_listing("1"));
    // Quiet passes (two 304s in moto's log, however long load makes them take): each is
    // one conditional GET answered 304 and nothing else.
    let quiet = moto().mark();
    let passed = tokio::task::spawn_blocking(move || {
        moto().wait_for("watched-bundle", quiet, Duration::from_secs(30), |c| {
            c.not_modified >= 2
        })
    })
    .await
    .unwrap();
    let counts = moto().counts("watched-bundle", quiet);
    assert!(
        passed && counts.get == 0 && counts.list == 0 && counts.head == 0,
        "{counts:?}"
    );
    bucket.put("app.tar.zst", Kind::Zst.pack(&app("2"))).await;
    common::next_notification(&socket, "RELOADING=1");
    common::next_notification(&socket, "READY=1");
    assert_eq!(listing(&to), app_listing("2"));
    assert_eq!(
        std::fs::read_to_string(&hook_log).unwrap(),
        format!("changed {}\n", to.display())
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(child.wait().await.unwrap().code(), Some(0));
}

/// A pinned archive replaced by one the unpacker refuses: the failure is that these are
/// not the pinned bytes (76), found by reading to the end, not the refusal (65).
#[tokio::test(flavor = "multi_thread")]
async fn a_replaced_pinned_archive_is_a_verification_failure_even_when_refused() {
    use sha2::Digest;
    let bucket = moto().bucket("pinned-hostile").await;
    let good = Kind::Zst.pack(&app("1"));
    let pin = hex::encode(sha2::Sha256::digest(&good));
    // Refused at its first entry, with 8 MB of incompressible bytes after it: far more
    // than the channel holds, so the download is still running when the unpacker stops.
    let mut noise = Vec::with_capacity(8 << 20);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while noise.len() < 8 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        noise.extend_from_slice(&x.to_le_bytes());
    }
    let evil = Kind::Zst.pack(&tar_of(&[
        E::File("../../victim", b"x", 0o644),
        E::File("padding", &noise, 0o644),
    ]));
    let got = hex::encode(sha2::Sha256::digest(&evil));
    bucket.put("app.tar.zst", evil).await;
    let sb = Sandbox::new();
    let out = sync(&sb, "s3://pinned-hostile/app.tar.zst", &["--sha256", &pin]).await;
    assert_exit(
        &out,
        76,
        &format!("its SHA-256 is {got}, the entry pins {pin}: not the archive it names"),
    );
    assert!(std::fs::symlink_metadata(sb.path("dest/app")).is_err());
}

/// A tar stream written block by block, exactly as told: headers as given (sizes that lie
/// included), bodies padded to a block, no end marker unless asked for.
#[derive(Default)]
struct Tape(Vec<u8>);

impl Tape {
    fn header(mut self, h: &tar::Header) -> Tape {
        self.0.extend_from_slice(h.as_bytes());
        self
    }

    fn body(mut self, data: &[u8]) -> Tape {
        self.0.extend_from_slice(data);
        self.0.resize(self.0.len().next_multiple_of(512), 0);
        self
    }

    /// A header whose size is its body's, then the body.
    fn entry(self, name: &str, kind: u8, data: &[u8], mode: u32) -> Tape {
        self.header(&header(name, kind, "", data.len() as u64, mode))
            .body(data)
    }

    fn file(self, name: &str, data: &[u8], mode: u32) -> Tape {
        self.entry(name, b'0', data, mode)
    }

    /// A PAX record set: `x` for the next entry, `g` for every entry after it.
    fn pax(self, kind: u8, records: &[(&str, &str)]) -> Tape {
        let data: Vec<u8> = records.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
        let name = match kind {
            b'g' => "pax_global_header",
            _ => "PaxHeaders/next",
        };
        self.entry(name, kind, &data, 0o644)
    }

    /// A GNU long-name (`L`) or long-link (`K`) record, as GNU tar writes it.
    fn long(self, kind: u8, name: &str) -> Tape {
        let data = [name.as_bytes(), b"\0"].concat();
        self.entry("././@LongLink", kind, &data, 0o644)
    }

    /// The two zero blocks that end an archive.
    fn end(self) -> Vec<u8> {
        self.zeros(1024)
    }

    fn zeros(mut self, n: usize) -> Vec<u8> {
        self.0.resize(self.0.len() + n, 0);
        self.0
    }

    fn bytes(self) -> Vec<u8> {
        self.0
    }
}

/// A ustar header (magic `ustar\0`, version `00`) whose name is `prefix` + `/` + `name`.
fn ustar_header(prefix: &str, name: &str, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    let ustar = h.as_ustar_mut().unwrap();
    ustar.prefix[..prefix.len()].copy_from_slice(prefix.as_bytes());
    ustar.name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(1_700_000_000);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    h
}

/// A file entry whose header gives its size in base-256, as GNU tar does past 8 GiB.
fn base256_file(name: &str, data: &[u8]) -> Tape {
    let mut h = header(name, b'0', "", 0, 0o644);
    let size = &mut h.as_old_mut().size;
    size.fill(0);
    size[0] = 0x80;
    size[4..].copy_from_slice(&(data.len() as u64).to_be_bytes());
    h.set_cksum();
    Tape::default().header(&h).body(data)
}

/// An old (v7) header with bytes in what ustar calls the name prefix: Python's tarfile
/// prepends them to the name, GNU tar and the `tar` crate do not.
fn v7_with_prefix(prefix: &str, name: &str) -> tar::Header {
    let mut h = header(name, b'0', "", 0, 0o644);
    h.as_mut_bytes()[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
    h.set_cksum();
    h
}

/// Every file, directory and symlink under `root` (through its symlink, if it is one): a
/// file as its mode, size and SHA-256, a directory as its mode, a symlink as its target.
/// `normalize`: a file's mode as bootstage would make it with the default modes (0755
/// where any executable bit is set, else 0644), a directory's as 0755: for GNU tar's
/// extraction, which keeps the archive's modes.
fn described(root: &Path, normalize: bool) -> BTreeMap<String, String> {
    use sha2::Digest;
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let mode = meta.permissions().mode() & 0o7777;
            let what = if meta.is_symlink() {
                format!("link {}", std::fs::read_link(&path).unwrap().display())
            } else if meta.is_dir() {
                stack.push(path);
                format!("dir {:o}", if normalize { 0o755 } else { mode })
            } else if meta.is_file() {
                let data = std::fs::read(&path).unwrap();
                let mode = match normalize {
                    true if mode & 0o111 != 0 => 0o755,
                    true => 0o644,
                    false => mode,
                };
                let sha = hex::encode(sha2::Sha256::digest(&data));
                format!("file {mode:o} {} {sha}", data.len())
            } else {
                format!("other {:o}", meta.permissions().mode())
            };
            out.insert(rel, what);
        }
    }
    out
}

/// What Python's tarfile reads in the (uncompressed) archive at `tar`, in `described`'s
/// form (tests/fixtures/tarlist.py); its error when it cannot read it.
fn tarfile_reads(tar: &Path) -> Result<BTreeMap<String, String>, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tarlist.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(tar)
        .output()
        .expect("python3 runs");
    match out.status.success() {
        true => Ok(serde_json::from_slice(&out.stdout).unwrap()),
        false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
    }
}

/// What GNU tar extracts from the archive at `tar` into `into`, in `described`'s
/// normalized form; its error when it refuses the archive.
fn gnu_tar_writes(tar: &Path, into: &Path) -> Result<BTreeMap<String, String>, String> {
    std::fs::create_dir_all(into).unwrap();
    let out = std::process::Command::new("tar")
        .args(["-x", "--no-same-owner", "--no-same-permissions", "-f"])
        .arg(tar)
        .arg("-C")
        .arg(into)
        .output()
        .expect("GNU tar runs");
    match out.status.success() {
        true => Ok(described(into, true)),
        false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
    }
}

/// What bootstage must make of an archive.
enum Verdict {
    /// Exit 0, and the tree is what Python's tarfile reads (the reference reader); GNU tar
    /// accepts it (`gnu`) and extracts the same, or refuses it.
    Same { gnu: bool },
    /// Exit 65 with this message; nothing swapped in.
    Refused(String),
}

/// One archive of a table: its name, the tar stream the references read, the bytes
/// bootstage reads (that stream packed as `kind`, or other bytes: a broken gzip trailer)
/// and what must come of it.
struct Case {
    name: &'static str,
    tar: Vec<u8>,
    packed: (Kind, Vec<u8>),
    verdict: Verdict,
}

fn plain(name: &'static str, tar: Vec<u8>, verdict: Verdict) -> Case {
    Case {
        name,
        packed: (Kind::Tar, tar.clone()),
        tar,
        verdict,
    }
}

fn refusal(entry: &str, why: &str) -> Verdict {
    Verdict::Refused(format!("archive entry {entry:?} refused: {why}"))
}

fn malformed(kind: Kind, why: &str) -> Verdict {
    Verdict::Refused(format!(
        "the archive is not a readable {} archive: {why}",
        kind.ext()
    ))
}

/// Unpacks each case from a file:// source and holds it to its verdict; every case that
/// fails is named in one panic at the end.
async fn judge(cases: Vec<Case>) {
    let version = std::process::Command::new("tar")
        .arg("--version")
        .output()
        .expect("GNU tar runs");
    assert!(
        String::from_utf8_lossy(&version.stdout).starts_with("tar (GNU tar)"),
        "tar is not GNU tar"
    );
    let mut failures = Vec::new();
    for case in cases {
        let sb = Sandbox::new();
        let raw = sb.path("reference.tar");
        std::fs::write(&raw, &case.tar).unwrap();
        let file = sb.path(&format!("{}.{}", case.name, case.packed.0.ext()));
        std::fs::write(&file, &case.packed.1).unwrap();
        let to = sb.path("dest/app");
        let url = format!("file://{}", file.display());
        let out =
            common::run(sb.command(&["s3-sync", "--from", &url, "--to", to.to_str().unwrap()]))
                .await;
        let name = case.name;
        match case.verdict {
            Verdict::Same { gnu } => {
                if out.code != 0 {
                    failures.push(format!("{name}: exit {}: {}", out.code, last_line(&out)));
                    continue;
                }
                let reference = match tarfile_reads(&raw) {
                    Ok(tree) => tree,
                    Err(e) => {
                        failures.push(format!("{name}: accepted, but tarfile refuses it: {e}"));
                        continue;
                    }
                };
                let wrote = described(&to, false);
                if wrote != reference {
                    failures.push(format!(
                        "{name}: bootstage wrote {wrote:?}, tarfile reads {reference:?}"
                    ));
                }
                match (gnu, gnu_tar_writes(&raw, &sb.path("gnu"))) {
                    (true, Ok(tree)) if tree == reference => {}
                    (false, Err(_)) => {}
                    (_, theirs) => failures.push(format!(
                        "{name}: GNU tar should {}: it gives {theirs:?}, tarfile reads {reference:?}",
                        if gnu { "accept it" } else { "refuse it" }
                    )),
                }
            }
            Verdict::Refused(message) => {
                if out.code != 65 || !out.stderr.contains(&message) {
                    failures.push(format!(
                        "{name}: expected exit 65 with {message:?}, got exit {}: {}",
                        out.code,
                        last_line(&out)
                    ));
                }
                if std::fs::symlink_metadata(&to).is_ok() {
                    failures.push(format!("{name}: refused, yet {} was made", to.display()));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn last_line(out: &Outcome) -> String {
    let line = out
        .stderr
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or("");
    line.chars().take(400).collect()
}

/// The archive bootstage unpacks is the archive Python's tarfile and GNU tar read, or it is
/// refused: entries whose framing or names those readers (and the `tar` crate) disagree
/// on are refused, and every archive accepted unpacks to exactly what tarfile lists.
#[tokio::test(flavor = "multi_thread")]
async fn bootstage_unpacks_what_tarfile_and_gnu_tar_read_or_refuses() {
    let evil = Tape::default()
        .file("evil.sh", b"echo pwned\n", 0o755)
        .bytes();
    let sha = "0123456789abcdef0123456789abcdef01234567";
    let long_dir = "d".repeat(200);
    let long_file = format!("{long_dir}/{}", "f".repeat(150));
    let long_target = format!("../{}", "t".repeat(160));
    let cases = vec![
        plain("app", app("1"), Verdict::Same { gnu: true }),
        plain(
            "gnu-long-names",
            Tape::default()
                .long(b'L', &long_file)
                .file("short", b"long\n", 0o644)
                .long(b'L', &format!("{long_dir}/link"))
                .long(b'K', &long_target)
                .header(&header("short-link", b'2', "short", 0, 0o777))
                .file(&format!("{}.txt", "t".repeat(96)), b"target\n", 0o644)
                .entry(&"t".repeat(100), b'5', b"", 0o755)
                .end(),
            Verdict::Same { gnu: true },
        ),
        plain(
            "pax-path-and-linkpath",
            Tape::default()
                .pax(
                    b'x',
                    &[("path", "pax/named.txt"), ("mtime", "1700000000.5")],
                )
                .file("ignored", b"pax\n", 0o600)
                .pax(b'x', &[("linkpath", "named.txt")])
                .header(&header("pax/link", b'2', "ignored", 0, 0o777))
                .end(),
            Verdict::Same { gnu: true },
        ),
        // Two records of one key: every reader takes the last.
        plain(
            "pax-path-twice",
            Tape::default()
                .pax(b'x', &[("path", "first"), ("path", "second")])
                .file("header", b"2\n", 0o644)
                .end(),
            Verdict::Same { gnu: true },
        ),
        // As `git archive` writes it: a global header with the commit, nothing else.
        plain(
            "global-comment",
            Tape::default()
                .pax(b'g', &[("comment", sha)])
                .entry("repo/", b'5', b"", 0o755)
                .file("repo/run.sh", b"#!/bin/sh\n", 0o775)
                .end(),
            Verdict::Same { gnu: true },
        ),
        // Owners and times bootstage ignores in every entry anyway.
        plain(
            "global-owners-and-times",
            Tape::default()
                .pax(
                    b'g',
                    &[
                        ("mtime", "1700000000"),
                        ("atime", "1700000000"),
                        ("uid", "0"),
                        ("gid", "0"),
                        ("uname", "root"),
                        ("gname", "root"),
                    ],
                )
                .file("a", b"a\n", 0o644)
                .end(),
            Verdict::Same { gnu: true },
        ),
        // A v7 directory: a regular file of the old type ('\0') whose name ends in '/'.
        plain(
            "v7-directory",
            Tape::default()
                .entry("old/", 0, b"", 0o755)
                .file("old/file", b"x", 0o100)
                .end(),
            Verdict::Same { gnu: true },
        ),
        plain(
            "ustar-prefix",
            Tape::default()
                .header(&ustar_header("some/deep/dir", "file.txt", 6))
                .body(b"ustar\n")
                .end(),
            Verdict::Same { gnu: true },
        ),
        plain(
            "base-256-size",
            base256_file("b256", b"binary size\n").end(),
            Verdict::Same { gnu: true },
        ),
        // The issue's: `docs/` says 512 bytes follow; tarfile and GNU tar read no data for a
        // directory and see `benign.txt`, whose data is `evil.sh`; the `tar` crate skipped
        // the 512 bytes (benign.txt's header) and unpacked evil.sh, mode 0755.
        plain(
            "directory-with-a-size",
            Tape::default()
                .header(&header("docs/", b'5', "", 512, 0o755))
                .entry("benign.txt", b'0', &evil, 0o644)
                .end(),
            refusal(
                "docs/",
                "its header gives this directory a size of 512 bytes: tar readers disagree on whether data follows it",
            ),
        ),
        plain(
            "symlink-with-a-size",
            Tape::default()
                .header(&header("readme", b'2', "benign.txt", 512, 0o777))
                .entry("benign.txt", b'0', &evil, 0o644)
                .end(),
            refusal(
                "readme",
                "its header gives this symlink a size of 512 bytes: tar readers disagree on whether data follows it",
            ),
        ),
        plain(
            "v7-directory-with-a-size",
            Tape::default()
                .header(&header("old/", 0, "", 512, 0o755))
                .entry("benign.txt", b'0', &evil, 0o644)
                .end(),
            refusal(
                "old/",
                "its header gives this directory a size of 512 bytes: tar readers disagree on whether data follows it",
            ),
        ),
        // tarfile reads a file named "dir/", GNU tar makes a directory.
        plain(
            "regular-file-named-as-a-directory",
            Tape::default().file("dir/", b"", 0o644).end(),
            refusal("dir/", "it is a regular file, but its name ends in '/'"),
        ),
        // The issue's: a global size makes `readme` 1,024 bytes for tarfile and GNU tar,
        // `evil.sh` among them; bootstage read an empty readme, then evil.sh.
        plain(
            "global-size",
            Tape::default()
                .pax(b'g', &[("size", "1024")])
                .file("readme", b"", 0o644)
                .file("evil.sh", b"echo pwned\n", 0o755)
                .end(),
            refusal(
                "pax_global_header",
                "it sets \"size\" for the entries after it, which bootstage does not apply",
            ),
        ),
        plain(
            "global-path",
            Tape::default()
                .pax(b'g', &[("path", "renamed.txt")])
                .file("evil.sh", b"echo pwned\n", 0o755)
                .end(),
            refusal(
                "pax_global_header",
                "it sets \"path\" for the entries after it, which bootstage does not apply",
            ),
        ),
        plain(
            "global-path-before-a-long-name",
            Tape::default()
                .pax(b'g', &[("comment", sha), ("path", "evil.sh")])
                .long(b'L', &long_file)
                .file("short", b"x", 0o644)
                .end(),
            refusal(
                "pax_global_header",
                "it sets \"path\" for the entries after it, which bootstage does not apply",
            ),
        ),
        plain(
            "global-linkpath",
            Tape::default()
                .pax(b'g', &[("linkpath", "/etc/shadow")])
                .header(&header("conf", b'2', "app.conf", 0, 0o777))
                .file("app.conf", b"x", 0o644)
                .end(),
            refusal(
                "pax_global_header",
                "it sets \"linkpath\" for the entries after it, which bootstage does not apply",
            ),
        ),
        plain(
            "global-unknown-key",
            Tape::default()
                .pax(b'g', &[("hdrcharset", "BINARY")])
                .file("a", b"a", 0o644)
                .end(),
            refusal(
                "pax_global_header",
                "it sets \"hdrcharset\" for the entries after it, which bootstage does not apply",
            ),
        ),
        // tarfile takes the GNU long name when it comes first, GNU tar the PAX path.
        plain(
            "long-name-then-pax-path",
            Tape::default()
                .long(b'L', "from-long-name")
                .pax(b'x', &[("path", "from-pax")])
                .file("header", b"x", 0o644)
                .end(),
            refusal(
                "from-pax",
                "both a GNU long name and a PAX path name it, and tar readers differ on which counts",
            ),
        ),
        plain(
            "long-link-then-pax-linkpath",
            Tape::default()
                .file("a", b"a\n", 0o644)
                .long(b'K', "a")
                .pax(b'x', &[("linkpath", "elsewhere")])
                .header(&header("conf", b'2', "", 0, 0o777))
                .end(),
            refusal(
                "conf",
                "both a GNU long link and a PAX linkpath give its target, and tar readers differ on which counts",
            ),
        ),
        plain(
            "v7-header-with-a-prefix",
            Tape::default()
                .header(&v7_with_prefix("elsewhere", "file"))
                .end(),
            refusal(
                "file",
                "its header is not ustar but has bytes in the ustar name prefix, which some tar readers prepend to its name",
            ),
        ),
    ];
    judge(cases).await;
}

fn gzip(data: &[u8]) -> Vec<u8> {
    Kind::Gz.pack(data)
}

/// zstd with the frame checksum (as the `zstd` tool writes it by default).
fn zstd_checked(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut z = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    z.include_checksum(true).unwrap();
    z.write_all(data).unwrap();
    z.finish().unwrap()
}

/// `bytes` with the byte at `from_end` places before its end flipped.
fn flipped(mut bytes: Vec<u8>, from_end: usize) -> Vec<u8> {
    let at = bytes.len() - from_end;
    bytes[at] ^= 0xff;
    bytes
}

/// An archive ends at its end-of-archive marker, with nothing but zeros after it, and the
/// compressed stream is read to its end (every gzip member's CRC, zstd's checksum): data
/// hidden after the marker, a broken check 2 MiB past it, or an archive that stops at an
/// entry boundary with no marker at all is refused (65). A lone zero block ends an archive
/// as GNU tar (with a warning) and tarfile accept it.
#[tokio::test(flavor = "multi_thread")]
async fn an_archive_ends_at_its_marker_with_only_zeros_after_it() {
    let app = app("1");
    let two_mib = 2 << 20;
    let padded = {
        let mut t = app.clone();
        t.resize(t.len() + two_mib, 0);
        t
    };
    let junk = Tape::default().file("junk", b"hidden\n", 0o755).end();
    let zeros_then_junk = [padded.clone(), junk].concat();
    let zst_frames = [zstd_checked(&app[..1536]), zstd_checked(&app[1536..])].concat();
    let cases = vec![
        plain(
            "lone-zero-block",
            Tape::default().file("a", b"a\n", 0o644).zeros(512),
            Verdict::Same { gnu: true },
        ),
        plain(
            "zeros-after-the-end",
            padded.clone(),
            Verdict::Same { gnu: true },
        ),
        Case {
            name: "gzip-members",
            packed: (Kind::Gz, [gzip(&app[..1536]), gzip(&app[1536..])].concat()),
            tar: app.clone(),
            verdict: Verdict::Same { gnu: true },
        },
        Case {
            name: "zstd-frames",
            packed: (Kind::Zst, zst_frames),
            tar: app.clone(),
            verdict: Verdict::Same { gnu: true },
        },
        plain(
            "junk-after-a-lone-zero-block",
            [
                Tape::default().file("a", b"a\n", 0o644).zeros(512),
                Tape::default().file("junk", b"hidden\n", 0o755).end(),
            ]
            .concat(),
            malformed(
                Kind::Tar,
                "it has data after its end-of-archive marker, at byte 1536 of the tar stream",
            ),
        ),
        // The issue's: 2 MiB of zeros after the marker, then a member.
        Case {
            name: "gzip-zeros-then-a-member",
            packed: (Kind::Gz, gzip(&zeros_then_junk)),
            tar: zeros_then_junk.clone(),
            verdict: malformed(
                Kind::Gz,
                &format!(
                    "it has data after its end-of-archive marker, at byte {} of the tar stream",
                    padded.len()
                ),
            ),
        },
        // The CRC (the trailer's first 4 bytes) is read only at the stream's end.
        Case {
            name: "gzip-crc-past-2-mib-of-zeros",
            packed: (Kind::Gz, flipped(gzip(&padded), 8)),
            tar: padded.clone(),
            verdict: malformed(
                Kind::Gz,
                "corrupt gzip stream does not have a matching checksum",
            ),
        },
        Case {
            name: "zstd-checksum-past-2-mib-of-zeros",
            packed: (Kind::Zst, flipped(zstd_checked(&padded), 1)),
            tar: padded.clone(),
            verdict: malformed(Kind::Zst, "Restored data doesn't match checksum"),
        },
        plain(
            "cut-at-an-entry-boundary",
            Tape::default()
                .file("a", b"a\n", 0o644)
                .file("b", b"b\n", 0o644)
                .bytes(),
            malformed(
                Kind::Tar,
                "it stops after the entry \"b\" without an end-of-archive marker",
            ),
        ),
        Case {
            name: "zstd-cut-at-an-entry-boundary",
            packed: (
                Kind::Zst,
                zstd_checked(&Tape::default().file("a", b"a\n", 0o644).bytes()),
            ),
            tar: Vec::new(),
            verdict: malformed(
                Kind::Zst,
                "it stops after the entry \"a\" without an end-of-archive marker",
            ),
        },
        plain(
            "empty",
            Vec::new(),
            malformed(
                Kind::Tar,
                "it stops before any entry without an end-of-archive marker",
            ),
        ),
        plain(
            "an-extension-record-then-the-end",
            Tape::default()
                .file("a", b"a\n", 0o644)
                .pax(b'x', &[("path", "b")])
                .end(),
            refusal(
                "PaxHeaders/next",
                "it is an extension record with no entry after it",
            ),
        ),
    ];
    judge(cases).await;
}

/// Runs `s3-sync --from file://ARCHIVE` with the destination's parent on a tmpfs of `size`
/// (mounted in a mount namespace of its own, gone with the process).
async fn sync_on_tmpfs(sb: &Sandbox, archive: &[u8], size: &str) -> Outcome {
    let file = sb.path("names.tar.zst");
    std::fs::write(&file, archive).unwrap();
    let parent = sb.path("dest");
    std::fs::create_dir_all(&parent).unwrap();
    let script = format!("mount -t tmpfs -o size={size} tmpfs \"$1\" && shift && exec \"$@\"");
    let url = format!("file://{}", file.display());
    let to = parent.join("app");
    let prefix = [
        "unshare",
        "-m",
        "sh",
        "-c",
        &script,
        "sh",
        parent.to_str().unwrap(),
    ];
    let args = ["s3-sync", "--from", &url, "--to", to.to_str().unwrap()];
    common::run(sb.command_under(&prefix, &args)).await
}

/// A directory of 15 segments of 255 bytes led by `tag`, and a 4,095-byte file name in it
/// (the longest path there is: PATH_MAX with its NUL).
fn long_path(tag: &str, i: usize) -> (String, String) {
    let first: String = format!("{tag}{}", "d".repeat(255))
        .chars()
        .take(255)
        .collect();
    let dir = [first]
        .into_iter()
        .chain(std::iter::repeat_n("d".repeat(255), 14))
        .collect::<Vec<_>>()
        .join("/");
    let last = 4095 - dir.len() - 1;
    let file = format!("{dir}/{:x<last$}", format!("f{i}-"));
    (dir, file)
}

/// Empty files with these names, each in a GNU long-name record, zstd-compressed.
fn long_named(names: &[String]) -> Vec<u8> {
    let mut tape = Tape::default();
    for name in names {
        tape = tape.long(b'L', name).file("short", b"", 0o644);
    }
    zstd::encode_all(&tape.end()[..], 1).unwrap()
}

/// The entry at which the names kept (each entry's path, each link's target, each
/// directory made) first pass 48 MiB.
fn past_the_name_cap(names: &[String]) -> usize {
    let mut dirs = std::collections::BTreeSet::new();
    let mut total = 0;
    for (i, name) in names.iter().enumerate() {
        total += name.len();
        for (at, _) in name.match_indices('/') {
            if dirs.insert(&name[..at]) {
                total += at;
            }
        }
        if total > 48 << 20 {
            return i;
        }
    }
    panic!("the names stay under the cap");
}

/// The archive: thousands of 4,095-byte names. The names bootstage keeps
/// (entries, link targets, and the directories it makes for them) are capped at 48 MiB,
/// and what the manifest and seal will take is charged against the file system's room
/// with the tree: refused (65, naming the entry) instead of unpacked without bound and
/// failing to write the manifest (73).
#[tokio::test(flavor = "multi_thread")]
async fn names_are_capped_and_the_manifest_charged_against_the_room() {
    // 16,400 files in one 3,839-byte directory: 67 MB of names.
    let names: Vec<String> = (0..16_400).map(|i| long_path("shared", i).1).collect();
    let at = past_the_name_cap(&names);
    let sb = Sandbox::new();
    let out = sync_on_tmpfs(&sb, &long_named(&names), "1g").await;
    let why = "the archive's names take more than 48 MiB (50331648 bytes)";
    assert_exit(
        &out,
        65,
        &format!("archive entry {:?} refused: {why}", names[at]),
    );
    assert!(std::fs::symlink_metadata(sb.path("dest/app")).is_err());

    // 2,200 files, each in 15 directories of its own: the entries' names are 9 MB, the
    // directories made for them 67 MB.
    let names: Vec<String> = (0..2_200)
        .map(|i| long_path(&format!("t{i}-"), i).1)
        .collect();
    let at = past_the_name_cap(&names);
    let sb = Sandbox::new();
    let out = sync_on_tmpfs(&sb, &long_named(&names), "1g").await;
    assert_exit(
        &out,
        65,
        &format!("archive entry {:?} refused: {why}", names[at]),
    );

    // On 16 MiB: 1,000 such files fit with their manifest and seal; 3,000 take 12 MB of
    // blocks as a tree but three times that with their manifest and seal.
    let (dir, _) = long_path("shared", 0);
    let names = |n| {
        (0..n)
            .map(|i| long_path("shared", i).1)
            .collect::<Vec<String>>()
    };
    let sb = Sandbox::new();
    let out = sync_on_tmpfs(&sb, &long_named(&names(1_000)), "16m").await;
    assert_eq!(out.code, 0, "{}", last_line(&out));
    let sb = Sandbox::new();
    let out = sync_on_tmpfs(&sb, &long_named(&names(3_000)), "16m").await;
    assert_exit(&out, 65, &format!("archive entry \"{dir}/f"));
    assert_exit(
        &out,
        65,
        "refused: unpacking it would leave the file system of",
    );
    assert!(std::fs::symlink_metadata(sb.path("dest/app")).is_err());
}
