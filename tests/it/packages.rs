//! The packages an image build installs: the RPM carries exactly the .deb's
//! files with the same modes, the RPM world's scriptlets and preset, and installs into an
//! empty root; the aarch64 binary, cross-built, runs the metadata stage under qemu-user
//! and writes files identical to the x86_64 binary's.

use crate::common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn the(dir: &Path, ext: &str) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == ext))
        .unwrap_or_else(|| panic!("a .{ext} in {}", dir.display()))
}

/// (path, mode) of every regular file, from `rpm -qlvp` or `dpkg-deb -c` (same format:
/// `-rw-r--r-- … /path`).
fn files(listing: &str) -> BTreeSet<(String, String)> {
    listing
        .lines()
        .filter(|l| l.starts_with('-'))
        .map(|l| {
            let mode = l.split_whitespace().next().unwrap().to_string();
            let path = l.split_whitespace().last().unwrap().trim_start_matches('.');
            (path.to_string(), mode)
        })
        .collect()
}

#[test]
fn the_rpm_has_the_debs_files_modes_scriptlets_and_installs_into_an_empty_root() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().to_str().unwrap();
    run(Command::new("scripts/build-deb.sh").args(["--debug-build", "--output", dir]));
    // As on a Fedora or Amazon Linux build host, where systemd-rpm-macros defines these: a
    // spec that let rpm expand the scriptlets' text would run them as shell.
    let rpm_home = tempfile::tempdir().unwrap();
    std::fs::write(
        rpm_home.path().join(".rpmmacros"),
        "%systemd_post() EXPANDED\n%systemd_preun() EXPANDED\n%systemd_postun() EXPANDED\n",
    )
    .unwrap();
    let home = std::env::var("HOME").unwrap();
    let or_home = |var: &str, dir: &str| std::env::var(var).unwrap_or(format!("{home}/{dir}"));
    run(Command::new("scripts/build-rpm.sh")
        .args(["--debug-build", "--output", dir])
        .env("RUSTUP_HOME", or_home("RUSTUP_HOME", ".rustup"))
        .env("CARGO_HOME", or_home("CARGO_HOME", ".cargo"))
        .env("HOME", rpm_home.path()));
    let (deb, rpm) = (the(out.path(), "deb"), the(out.path(), "rpm"));

    let rpm_files = files(&run(Command::new("rpm").arg("-qlvp").arg(&rpm)));
    let mut deb_files = files(&run(Command::new("dpkg-deb").arg("-c").arg(&deb)));
    // Debian policy's copyright file, which cargo-deb writes; an RPM has a License header.
    assert!(deb_files.remove(&(
        "/usr/share/doc/bootstage/copyright".into(),
        "-rw-r--r--".into()
    )));
    // One asset list, two packages; zsh reads completions from site-functions on RPM
    // distributions, from vendor-completions on Debian.
    let deb_files: BTreeSet<(String, String)> = deb_files
        .into_iter()
        .map(|(path, mode)| {
            let path = path.replace(
                "/usr/share/zsh/vendor-completions/",
                "/usr/share/zsh/site-functions/",
            );
            (path, mode)
        })
        .collect();
    assert_eq!(rpm_files, deb_files, "one asset list, two packages");
    let paths: Vec<&str> = rpm_files.iter().map(|(p, _)| p.as_str()).collect();
    for want in [
        "/usr/bin/bootstage",
        "/usr/lib/systemd/system/bootstage-metadata.service",
        "/usr/lib/systemd/system/bootstage.target",
        "/usr/lib/systemd/system-preset/90-bootstage.preset",
        "/usr/share/man/man1/bootstage.1.gz",
        "/usr/share/bash-completion/completions/bootstage",
        "/etc/bootstage/bootstage.env",
        "/usr/share/doc/bootstage/examples/myapp-user.service",
    ] {
        assert!(paths.contains(&want), "{want} in {paths:?}");
    }
    assert!(rpm_files.contains(&("/usr/bin/bootstage".into(), "-rwxr-xr-x".into())));

    let q = |query: &str| run(Command::new("rpm").args(["-qp", query]).arg(&rpm));
    assert_eq!(
        run(Command::new("rpm")
            .args(["-qp", "--qf", "%{NAME}-%{VERSION}-%{RELEASE}.%{ARCH}"])
            .arg(&rpm)),
        format!("bootstage-{}-1.x86_64", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(q("--configfiles"), "/etc/bootstage/bootstage.env\n");
    let requires = q("--requires");
    assert!(
        requires.lines().any(|l| l.trim() == "systemd"),
        "{requires}"
    );
    let scripts = q("--scripts");
    let file = |name: &str| std::fs::read_to_string(format!("packaging/rpm/{name}")).unwrap();
    assert_eq!(
        scripts,
        format!(
            "postinstall scriptlet (using /bin/sh):\n{}preuninstall scriptlet (using /bin/sh):\n{}postuninstall scriptlet (using /bin/sh):\n{}",
            file("post"),
            file("preun"),
            file("postun")
        ),
        "the scriptlets are the files, byte for byte"
    );
    for want in [
        "systemctl --no-reload preset bootstage.target bootstage-resume.service",
        "systemctl --no-reload disable bootstage.target bootstage-resume.service",
        "install -d -o root -g root -m 0755 /etc/bootstage/hooks",
    ] {
        assert!(scripts.contains(want), "{want}: {scripts}");
    }
    for never in ["systemctl start", "systemctl restart", "--now"] {
        assert!(
            !scripts.contains(never),
            "nothing is started on install: {scripts}"
        );
    }
    assert_eq!(
        std::fs::read_to_string("packaging/90-bootstage.preset")
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>(),
        ["enable bootstage.target", "enable bootstage-resume.service"]
    );

    // Into an empty root, where the .deb puts the same files.
    let root = tempfile::tempdir().unwrap();
    run(Command::new("rpm")
        .arg("--root")
        .arg(root.path())
        .arg("--initdb"));
    run(Command::new("rpm")
        .arg("--root")
        .arg(root.path())
        .args(["--nodeps", "--noscripts", "-i"])
        .arg(&rpm));
    let unpacked = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(unpacked.path()));
    for (path, _) in &deb_files {
        let in_deb = path.replace(
            "/usr/share/zsh/site-functions/",
            "/usr/share/zsh/vendor-completions/",
        );
        let (a, b) = (
            root.path().join(&path[1..]),
            unpacked.path().join(&in_deb[1..]),
        );
        assert_eq!(common::mode(&a), common::mode(&b), "{path}");
        if path == "/usr/bin/bootstage" {
            // A test package's debug binary: cargo-deb strips it, build-rpm.sh never
            // strips. Release packages ship the same bytes (the release profile strips and
            // build-deb.sh passes --no-strip); here, the same program.
            let version = |bin: &Path| run(Command::new(bin).arg("--version"));
            assert_eq!(version(&a), version(&b));
            continue;
        }
        assert_eq!(
            std::fs::read(&a).unwrap(),
            std::fs::read(&b).unwrap(),
            "{path}"
        );
    }
}

/// The arm64 binary, cross-built as the packages build it, runs the metadata stage under
/// qemu-user against the IMDS emulator: its files are byte for byte the x86_64 binary's.
#[tokio::test(flavor = "multi_thread")]
async fn the_aarch64_binary_writes_what_the_x86_64_one_does() {
    let build = Command::new("sh")
        .args([
            "-c",
            ". scripts/cross.sh && cross_test_build && echo \"$cross_test_binary\"",
        ])
        .output()
        .unwrap();
    assert!(
        build.status.success(),
        "cross build: {}",
        String::from_utf8_lossy(&build.stderr)
    );
    let arm = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(String::from_utf8(build.stdout).unwrap().trim_end());
    let file = run(Command::new("file").arg("-b").arg(&arm));
    assert!(file.contains("ARM aarch64"), "{file}");

    // The example's password is an SSM reference: moto holds it.
    let params = std::fs::read_to_string("examples/params.json").unwrap();
    common::moto::moto()
        .ssm()
        .await
        .put_parameter()
        .name("/shop-web/staging/db-password")
        .value("example-secret")
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .overwrite(true)
        .send()
        .await
        .unwrap();
    let emu = imds_emulator::Emulator::start(imds_emulator::Config {
        user_data: Some(common::b64(&params).into()),
        tags: Some([("Name".to_string(), "web-1".to_string())].into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut outputs = Vec::new();
    for under_qemu in [false, true] {
        let sb = common::Sandbox::new();
        let url = emu.url();
        let args = ["metadata", "--imds-endpoint", url.as_str()];
        let mut cmd = match under_qemu {
            false => sb.command(&args),
            true => sb.command_under_of(
                &["qemu-aarch64-static", "-L", "/usr/aarch64-linux-gnu"],
                &arm,
                &args,
            ),
        };
        cmd.envs(
            common::moto::moto()
                .env()
                .into_iter()
                .filter(|(k, _)| *k != "AWS_EC2_METADATA_DISABLED"),
        );
        let out = common::run(cmd).await;
        assert_eq!(out.code, 0, "qemu {under_qemu}: {}", out.stderr);
        outputs.push(["params.json", "instance.json", "params.env"].map(|f| sb.read(f).unwrap()));
    }
    assert_eq!(outputs[0], outputs[1]);
}
