//! scripts/install.sh into a DESTDIR: what it installs (what the packages install: the
//! asset list in Cargo.toml), idempotence, and uninstall.

use crate::common;

use std::path::Path;
use std::process::Command;

fn files(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                stack.push(entry.path());
            } else {
                out.push(
                    entry
                        .path()
                        .strip_prefix(root)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    out.sort();
    out
}

/// The man pages and completions, as scripts/build-assets.sh makes them, in a directory of
/// this test's own (target/assets is rebuilt by the package builds running beside it).
fn assets() -> &'static Path {
    static ASSETS: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    ASSETS
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let status = Command::new(env!("CARGO"))
                .args(["run", "--quiet", "-p", "xtask", "--", "assets"])
                .arg(dir.path())
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .unwrap();
            assert!(status.success(), "xtask assets: {status}");
            let status = Command::new("sh")
                .arg("-c")
                .arg("gzip -9n \"$1\"/man/*.1")
                .arg("sh")
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success(), "gzip: {status}");
            dir
        })
        .path()
}

/// Where the Debian package puts each of its assets (Cargo.toml's
/// `[package.metadata.deb] assets`, which the RPM shares), with `assets()` for
/// target/assets and the binary under test for the release one.
fn package_files() -> Vec<String> {
    let manifest = std::fs::read_to_string("Cargo.toml").unwrap();
    let list = manifest
        .split("[package.metadata.deb]")
        .nth(1)
        .unwrap()
        .split("assets = [")
        .nth(1)
        .unwrap()
        .split("\n]")
        .next()
        .unwrap();
    let mut out = Vec::new();
    for line in list.lines().filter(|l| l.trim_start().starts_with('[')) {
        let entry: Vec<String> = serde_json::from_str(line.trim().trim_end_matches(',')).unwrap();
        let (source, to) = (&entry[0], &entry[1]);
        let sources: Vec<String> = match source.strip_prefix("target/assets/") {
            Some(rel) if rel.contains('*') => {
                let (dir, suffix) = rel.split_once("/*").unwrap();
                let mut names: Vec<String> = std::fs::read_dir(assets().join(dir))
                    .unwrap()
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(suffix))
                    .collect();
                names.sort();
                names
            }
            _ => vec![source.rsplit('/').next().unwrap().to_string()],
        };
        for name in sources {
            out.push(match to.ends_with('/') {
                true => format!("{to}{name}"),
                false => to.clone(),
            });
        }
    }
    out
}

fn install(dest: &Path, args: &[&str]) {
    install_with_umask(dest, args, "022");
}

fn install_with_umask(dest: &Path, args: &[&str], umask: &str) {
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("umask {umask}; exec scripts/install.sh \"$@\""))
        .arg("sh")
        .arg("--assets")
        .arg(assets())
        .args(args)
        .env("DESTDIR", dest)
        .status()
        .unwrap();
    assert!(status.success());
}

/// whatever the caller's umask, everything is root's with exact
/// modes; a umask of 000 made the hook directories world-writable (root runs hooks).
#[test]
fn modes_and_owners_do_not_depend_on_the_umask() {
    use std::os::unix::fs::MetadataExt;
    for umask in ["077", "000"] {
        let dest = tempfile::tempdir().unwrap();
        install_with_umask(dest.path(), &["--binary", common::BIN], umask);
        for (path, mode) in [
            ("etc/bootstage", 0o755),
            ("etc/bootstage/hooks", 0o755),
            ("etc/bootstage/hooks/per-instance.d", 0o755),
            ("etc/bootstage/hooks/per-boot.d", 0o755),
            ("etc/bootstage/hooks/per-start.d", 0o755),
            ("etc/systemd/system/hibernate.target.wants", 0o755),
            ("usr/lib/systemd/system", 0o755),
            ("usr/share/doc/bootstage", 0o755),
            ("usr/bin/bootstage", 0o755),
            ("usr/lib/systemd/system/bootstage-hooks.service", 0o644),
            ("usr/share/doc/bootstage/README.md", 0o644),
            ("usr/share/man/man1/bootstage.1.gz", 0o644),
            ("usr/share/man/man1/bootstage-image-prepare.1.gz", 0o644),
            ("usr/share/bash-completion/completions/bootstage", 0o644),
            ("etc/bootstage/bootstage.env", 0o644),
        ] {
            let at = dest.path().join(path);
            let meta = std::fs::metadata(&at).unwrap();
            assert_eq!(
                (common::mode(&at), meta.uid(), meta.gid()),
                (mode, 0, 0),
                "umask {umask}: {path}"
            );
        }
    }
}

#[test]
fn installs_enables_is_idempotent_and_uninstalls() {
    let dest = tempfile::tempdir().unwrap();
    install(dest.path(), &["--binary", common::BIN]);
    let first = files(dest.path());
    // What the packages install, and the links that enable the units.
    let mut expected = package_files();
    expected.extend(
        [
            "etc/systemd/system/hibernate.target.wants/bootstage-resume.service",
            "etc/systemd/system/hybrid-sleep.target.wants/bootstage-resume.service",
            "etc/systemd/system/multi-user.target.wants/bootstage.target",
            "etc/systemd/system/suspend-then-hibernate.target.wants/bootstage-resume.service",
        ]
        .map(String::from),
    );
    expected.sort();
    assert_eq!(first, expected);
    for file in [
        "usr/share/man/man1/bootstage.1.gz",
        "usr/share/man/man1/bootstage-image-prepare.1.gz",
        "usr/share/zsh/vendor-completions/_bootstage",
        "etc/bootstage/bootstage.env",
        "usr/share/doc/bootstage/examples/myapp.service",
    ] {
        assert!(first.iter().any(|f| f == file), "{file}: {first:?}");
    }
    assert_eq!(
        std::fs::read(dest.path().join("etc/bootstage/bootstage.env")).unwrap(),
        std::fs::read("packaging/bootstage.env").unwrap()
    );
    let link = dest
        .path()
        .join("etc/systemd/system/multi-user.target.wants/bootstage.target");
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        Path::new("/usr/lib/systemd/system/bootstage.target")
    );
    assert_eq!(common::mode(&dest.path().join("usr/bin/bootstage")), 0o755);
    assert_eq!(
        common::mode(&dest.path().join("usr/lib/systemd/system/bootstage.target")),
        0o644
    );

    install(dest.path(), &["--binary", common::BIN]);
    assert_eq!(
        files(dest.path()),
        first,
        "a second install changes nothing"
    );

    // The operator's settings are kept over by an install, and by an uninstall.
    std::fs::write(
        dest.path().join("etc/bootstage/bootstage.env"),
        "AWS_REGION=eu-west-1\n",
    )
    .unwrap();
    install(dest.path(), &["--binary", common::BIN]);
    assert_eq!(
        std::fs::read_to_string(dest.path().join("etc/bootstage/bootstage.env")).unwrap(),
        "AWS_REGION=eu-west-1\n"
    );
    install(dest.path(), &["--uninstall"]);
    assert_eq!(
        files(dest.path()),
        ["etc/bootstage/bootstage.env"],
        "only the operator's config stays"
    );
}
