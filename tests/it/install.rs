//! scripts/install.sh into a DESTDIR: what it installs, idempotence, and uninstall.

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

fn install(dest: &Path, args: &[&str]) {
    install_with_umask(dest, args, "022");
}

fn install_with_umask(dest: &Path, args: &[&str], umask: &str) {
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("umask {umask}; exec scripts/install.sh \"$@\""))
        .arg("sh")
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
    assert_eq!(
        first,
        [
            "etc/systemd/system/hibernate.target.wants/bootstage-resume.service",
            "etc/systemd/system/hybrid-sleep.target.wants/bootstage-resume.service",
            "etc/systemd/system/multi-user.target.wants/bootstage.target",
            "etc/systemd/system/suspend-then-hibernate.target.wants/bootstage-resume.service",
            "usr/bin/bootstage",
            "usr/lib/systemd/system/bootstage-failure@.service",
            "usr/lib/systemd/system/bootstage-hooks.service",
            "usr/lib/systemd/system/bootstage-in-service.service",
            "usr/lib/systemd/system/bootstage-in-service.target",
            "usr/lib/systemd/system/bootstage-lifecycle.service",
            "usr/lib/systemd/system/bootstage-metadata.service",
            "usr/lib/systemd/system/bootstage-ready.service",
            "usr/lib/systemd/system/bootstage-resume.service",
            "usr/lib/systemd/system/bootstage-s3-sync.service",
            "usr/lib/systemd/system/bootstage.target",
            "usr/share/doc/bootstage/README.md",
        ]
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

    std::fs::write(
        dest.path().join("etc/bootstage/bootstage.env"),
        "AWS_REGION=eu-west-1\n",
    )
    .unwrap();
    install(dest.path(), &["--uninstall"]);
    assert_eq!(
        files(dest.path()),
        ["etc/bootstage/bootstage.env"],
        "only the operator's config stays"
    );
}
