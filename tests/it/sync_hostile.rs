//! s3-sync as root in directories an app user can write: the real
//! binary, a scratch tree, the smallest input that showed each defect. Each test failed
//! before its fix.

use crate::common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::faults::{self, Faults};
use common::moto::moto;
use common::{Outcome, Sandbox, assert_exit, mode};

/// `s3-sync --from file://SRC --to DEST` by hand.
async fn sync_dir(sb: &Sandbox, src: &Path, dest: &Path) -> Outcome {
    let from = format!("file://{}/", src.display());
    sb.run(&["s3-sync", "--from", &from, "--to", dest.to_str().unwrap()])
        .await
}

/// The configured sync (`bootstage.sync` = `entries`), with the parameters seeded as the
/// metadata stage would have written them.
async fn sync_configured(sb: &Sandbox, entries: serde_json::Value) -> Outcome {
    sb.seed_sync(entries);
    sb.run(&["s3-sync", "--sync-timeout", "20s"]).await
}

fn source(sb: &Sandbox, files: &[(&str, &str)]) -> PathBuf {
    let src = sb.path("src");
    for (name, text) in files {
        let path = src.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    src
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// `--to dest` and `--to new/dir/dest` by hand, relative to the working directory, sync
/// there. Both failed with ": No such file or directory (os error 2)", naming nothing: the
/// parent of `dest`, and the first missing directory's, is "".
#[tokio::test]
async fn a_relative_destination_is_below_the_working_directory() {
    let sb = Sandbox::new();
    let src = source(&sb, &[("a.conf", "data")]);
    let from = format!("file://{}/", src.display());
    for to in ["dest", "new/dir/dest"] {
        let mut cmd = sb.command(&["s3-sync", "--from", &from, "--to", to]);
        cmd.current_dir(sb.path(""));
        let out = common::run(cmd).await;
        assert_exit(&out, 0, "");
        assert_eq!(entries(&sb.path(to)), ["a.conf"]);
        assert_eq!(
            std::fs::read_to_string(sb.path(to).join("a.conf")).unwrap(),
            "data"
        );
    }
}

/// The parent of `to` was opened by path, following symlinks: the app that owns
/// `srv/app` planted `srv/app/etc -> victim` (a root-owned directory), and `to:
/// srv/app/etc/config` removed victim's empty `config` and put the app's generation there.
/// A symlink on the way is now followed only where root owns it and every directory above
/// it; anything else is refused (65), naming the link, before anything is written.
#[tokio::test]
async fn a_destination_behind_a_symlink_someone_else_controls_is_refused() {
    let sb = Sandbox::new();
    let src = source(&sb, &[("a.conf", "data")]);
    let victim = sb.path("victim");
    std::fs::create_dir_all(victim.join("config")).unwrap();
    let app = sb.path("srv/app");
    std::fs::create_dir_all(&app).unwrap();
    std::os::unix::fs::chown(&app, Some(65534), Some(65534)).unwrap();
    // The app's own link, and a link of root's in the app's directory (which the app can
    // replace at any moment): both refused.
    let theirs = app.join("etc");
    std::os::unix::fs::symlink(&victim, &theirs).unwrap();
    std::os::unix::fs::lchown(&theirs, Some(65534), Some(65534)).unwrap();
    let roots = app.join("etc2");
    std::os::unix::fs::symlink(&victim, &roots).unwrap();
    let cases = [
        (
            theirs.join("config"),
            format!("{} is a symlink owned by uid 65534", theirs.display()),
        ),
        (
            theirs.join("new/dir/config"),
            format!("{} is a symlink owned by uid 65534", theirs.display()),
        ),
        (
            roots.join("config"),
            format!(
                "{} is a symlink in {}, which a user other than root can change",
                roots.display(),
                app.display()
            ),
        ),
    ];
    for (to, message) in cases {
        let out = sync_dir(&sb, &src, &to).await;
        assert_exit(&out, 65, &message);
        assert_eq!(entries(&victim), ["config"], "{}", to.display());
        assert!(entries(&victim.join("config")).is_empty());
    }

    // Root's link in root's directories (as `/var/run -> ../run` is) is followed, and
    // missing directories behind it are created.
    let real = sb.path("real");
    std::fs::create_dir(&real).unwrap();
    std::os::unix::fs::symlink("real", sb.path("link")).unwrap();
    for to in ["link/config", "link/new/../dir/config"] {
        let out = sync_dir(&sb, &src, &sb.path(to)).await;
        assert_exit(&out, 0, "");
    }
    assert_eq!(
        entries(&real),
        [".config.bootstage", "config", "dir", "new"]
    );
    for file in ["config/a.conf", "dir/config/a.conf"] {
        assert_eq!(std::fs::read_to_string(real.join(file)).unwrap(), "data");
    }
}

/// `.config.bootstage -> /some/dir` made root delete every file in /some/dir and
/// build its generations there.
#[tokio::test]
async fn a_symlinked_home_is_refused_and_its_target_untouched() {
    let sb = Sandbox::new();
    let src = source(&sb, &[("a.conf", "data")]);
    let victim = sb.path("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(victim.join("keep.db"), "precious").unwrap();
    std::fs::create_dir_all(sb.path("srv/x")).unwrap();
    std::os::unix::fs::symlink(&victim, sb.path("srv/x/.config.bootstage")).unwrap();
    let out = sync_dir(&sb, &src, &sb.path("srv/x/config")).await;
    assert_exit(
        &out,
        73,
        &format!(
            "{} is not a home bootstage can trust (it is a symlink)",
            sb.path("srv/x/.config.bootstage").display()
        ),
    );
    assert_eq!(entries(&victim), ["keep.db"]);
    assert_eq!(
        std::fs::read_to_string(victim.join("keep.db")).unwrap(),
        "precious"
    );
    assert!(std::fs::symlink_metadata(sb.path("srv/x/config")).is_err());
}

/// a home the app made (its owner, or writable by others, or without our lock)
/// is refused, and nothing in it is deleted.
#[tokio::test]
async fn a_home_bootstage_cannot_trust_is_refused_untouched() {
    let sb = Sandbox::new();
    let src = source(&sb, &[("a.conf", "data")]);
    let home = sb.path("srv/.config.bootstage");
    let dest = sb.path("srv/config");
    type Make = fn(&Path);
    let cases: [(&str, Make); 3] = [
        ("owned by uid 12345, not 0", |h| {
            std::os::unix::fs::chown(h, Some(12345), None).unwrap()
        }),
        ("mode 775 lets others write it", |h| {
            std::fs::set_permissions(h, std::fs::Permissions::from_mode(0o775)).unwrap()
        }),
        (
            "it has no .lock of bootstage's, so bootstage did not make it",
            |_| {},
        ),
    ];
    for (why, make) in cases {
        std::fs::create_dir_all(&home).unwrap();
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(home.join("gen-planted"), "theirs").unwrap();
        make(&home);
        let out = sync_dir(&sb, &src, &dest).await;
        assert_exit(
            &out,
            73,
            &format!("is not a home bootstage can trust ({why})"),
        );
        assert_eq!(entries(&home), ["gen-planted"], "{why}");
        std::fs::remove_dir_all(&home).unwrap();
    }
}

/// with `owner`, the app owns the current generation and can put a symlink where
/// a file was; the next sync carried it forward and chmodded its target as root.
#[tokio::test]
async fn root_never_chmods_or_chowns_through_a_planted_symlink() {
    let sb = Sandbox::new();
    let src = source(&sb, &[("a.conf", "one"), ("d/b.conf", "two")]);
    // Root's file, the same size as d/b.conf, in a directory the app can point at.
    let rootdir = sb.path("rootdir");
    std::fs::create_dir(&rootdir).unwrap();
    let secret = rootdir.join("b.conf");
    std::fs::write(&secret, "XYZ").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let dest = sb.path("srv/config");
    let entry = serde_json::json!([{
        "from": format!("file://{}/", src.display()),
        "to": dest,
        "owner": "12345",
        "group": "12345",
        "file_mode": "0644",
        "dir_mode": "0755",
    }]);
    let out = sync_configured(&sb, entry.clone()).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(std::fs::metadata(dest.join("a.conf")).unwrap().uid(), 12345);

    // The app swaps a file and a directory of its tree for symlinks to root's file.
    std::fs::remove_file(dest.join("a.conf")).unwrap();
    std::os::unix::fs::symlink(&secret, dest.join("a.conf")).unwrap();
    std::fs::remove_dir_all(dest.join("d")).unwrap();
    std::os::unix::fs::symlink(&rootdir, dest.join("d")).unwrap();
    // A new object makes the next sync build a new generation.
    std::fs::write(src.join("c.conf"), "three").unwrap();
    let out = sync_configured(&sb, entry).await;
    assert_eq!(out.code, 0, "{}", out.stderr);

    let meta = std::fs::metadata(&secret).unwrap();
    assert_eq!((mode(&secret), meta.uid(), meta.gid()), (0o600, 0, 0));
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "XYZ");
    for (name, text) in [("a.conf", "one"), ("d/b.conf", "two"), ("c.conf", "three")] {
        let path = dest.join(name);
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.is_file(), "{name} is a regular file again");
        assert_eq!((meta.uid(), mode(&path)), (12345, 0o644), "{name}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    }
}

/// carry-forward compared sizes only, so the app's same-size edit (mtime put
/// back) survived every later sync.
#[tokio::test(flavor = "multi_thread")]
async fn a_same_size_edit_is_fetched_again() {
    let bucket = moto().bucket("edited").await;
    bucket.put("e/app.conf", "port=8080\n").await;
    bucket.put("e/other.conf", "x\n").await;
    let sb = Sandbox::new();
    let dest = sb.path("dest/config");
    let sync = || async {
        let mut cmd = sb.command(&[
            "s3-sync",
            "--from",
            "s3://edited/e/",
            "--to",
            dest.to_str().unwrap(),
        ]);
        cmd.envs(moto().env());
        common::run(cmd).await
    };
    assert_eq!(sync().await.code, 0);
    let file = dest.join("app.conf");
    let before = std::fs::metadata(&file).unwrap();
    std::fs::write(&file, "port=6666\n").unwrap();
    let times = std::fs::FileTimes::new()
        .set_modified(before.modified().unwrap())
        .set_accessed(before.accessed().unwrap());
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_times(times)
        .unwrap();
    assert_eq!(
        std::fs::metadata(&file).unwrap().modified().unwrap(),
        before.modified().unwrap()
    );

    let mark = moto().mark();
    let out = sync().await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "port=8080\n");
    let counts = moto().counts("edited", mark);
    assert_eq!(
        (counts.list, counts.get),
        (1, 1),
        "one LIST, one GET: only the edited file"
    );
    // Untouched since: nothing to fetch.
    let mark = moto().mark();
    assert_eq!(sync().await.code, 0);
    assert_eq!(moto().counts("edited", mark).get, 0);
}

/// nested destinations are refused before anything is written.
#[tokio::test]
async fn nested_destinations_are_refused_before_anything_is_written() {
    let sb = Sandbox::new();
    let src = source(&sb, &[("a", "1")]);
    let from = format!("file://{}/", src.display());
    let (outer, inner) = (sb.path("srv/a"), sb.path("srv/a/b"));
    let out = sync_configured(
        &sb,
        serde_json::json!([{"from": from, "to": outer}, {"from": from, "to": format!("{}/", inner.display())}]),
    )
    .await;
    assert_exit(
        &out,
        65,
        &format!(
            "bootstage.sync: {} and {}/ have one destination inside the other",
            outer.display(),
            inner.display()
        ),
    );
    assert!(!sb.path("srv").exists());
}

/// missing parents are root's and 0755, not `dir_mode` (which could lock the app
/// out of its own directory), whatever the umask.
#[tokio::test]
async fn missing_parents_are_created_root_0755_whatever_the_umask() {
    let sb = Sandbox::new();
    let src = source(&sb, &[("a", "1")]);
    let dest = sb.path("srv/app/conf/live");
    let params = serde_json::json!({"bootstage": {"sync": [{
        "from": format!("file://{}/", src.display()), "to": dest, "dir_mode": "0700"
    }]}});
    sb.seed("params.json", &params.to_string());
    sb.seed("instance.json", "{}");
    sb.seed("params.env", "");
    sb.seed("hooks.env", "");
    let cmd = sb.command_under(&["sh", "-c", "umask 077; exec \"$@\"", "sh"], &["s3-sync"]);
    let out = common::run(cmd).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    for dir in ["srv", "srv/app", "srv/app/conf"] {
        let meta = std::fs::metadata(sb.path(dir)).unwrap();
        assert_eq!((mode(&sb.path(dir)), meta.uid()), (0o755, 0), "{dir}");
    }
    assert_eq!(mode(&dest.join(".")), 0o700, "the tree itself has dir_mode");
}

/// the new tree is in place once swapped; failing to remove the old one is a
/// warning, not a failed boot.
#[tokio::test]
async fn an_old_generation_that_cannot_be_removed_is_only_a_warning() {
    let sb = Sandbox::new();
    let src = source(&sb, &[("a", "1")]);
    let dest = sb.path("srv/config");
    assert_eq!(sync_dir(&sb, &src, &dest).await.code, 0);
    let old = std::fs::canonicalize(&dest).unwrap();
    let pinned = old.join("a");
    let chattr = |flag: &str| {
        let ok = std::process::Command::new("chattr")
            .arg(flag)
            .arg(&pinned)
            .status()
            .unwrap();
        assert!(ok.success(), "chattr {flag}");
    };
    chattr("+i");
    // The previous generation is kept (`keep`, 2 by default): the one after it prunes it.
    std::fs::write(src.join("a"), "2").unwrap();
    assert_eq!(sync_dir(&sb, &src, &dest).await.code, 0);
    std::fs::write(src.join("a"), "3").unwrap();
    let out = sync_dir(&sb, &src, &dest).await;
    chattr("-i");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(std::fs::read_to_string(dest.join("a")).unwrap(), "3");
    assert!(
        out.stderr
            .contains("cannot remove an old generation; the next run will"),
        "{}",
        out.stderr
    );
    // And the next run does.
    assert_eq!(sync_dir(&sb, &src, &dest).await.code, 0);
    assert!(!old.exists());
}

/// a `file://` source's symlinks (to a file or a directory outside it) are not
/// followed; root copies nothing it was pointed at.
#[tokio::test]
async fn file_sources_never_follow_symlinks() {
    let sb = Sandbox::new();
    let src = source(&sb, &[("real.conf", "mine")]);
    let outside = sb.path("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("shadow"), "root's secret").unwrap();
    std::os::unix::fs::symlink(outside.join("shadow"), src.join("link.conf")).unwrap();
    std::os::unix::fs::symlink(&outside, src.join("linkdir")).unwrap();
    let dest = sb.path("srv/config");
    let out = sync_dir(&sb, &src, &dest).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        entries(&std::fs::canonicalize(&dest).unwrap()),
        ["real.conf"]
    );
    assert!(
        out.stderr.contains("(symlinks are not followed)"),
        "{}",
        out.stderr
    );
}

/// an S3 body longer than listed is never written past the listed size; it fails
/// verification and nothing is swapped in.
#[tokio::test(flavor = "multi_thread")]
async fn an_s3_body_longer_than_listed_is_refused() {
    let bucket = moto().bucket("longer").await;
    bucket.put("l/a.conf", "12345").await;
    let faults = Faults::default();
    faults
        .lengthen
        .store(1, std::sync::atomic::Ordering::SeqCst);
    let proxy = faults::start(&moto().url, faults).await;
    let sb = Sandbox::new();
    let dest = sb.path("dest/config");
    let mut cmd = sb.command(&[
        "s3-sync",
        "--from",
        "s3://longer/l/",
        "--to",
        dest.to_str().unwrap(),
    ]);
    cmd.envs(moto().env()).env("AWS_ENDPOINT_URL", &proxy.url);
    let out = common::run(cmd).await;
    assert_exit(
        &out,
        76,
        "l/a.conf: verification failed: the body is longer than the 5 bytes listed",
    );
    assert!(std::fs::symlink_metadata(&dest).is_err());
}
