//! The operator surface, hardened: durations as systemd reads
//! them, notices that are heard of and never leak a header value. The real binary; a
//! webhook and the IMDS emulator on 127.0.0.1. Each test failed before its fix.

use crate::common;

use std::time::Duration;

use common::webhook::Webhook;
use common::{Sandbox, assert_exit};
use imds_emulator::{Config, Emulator};
use serde_json::{Value, json};

fn notify_config(sb: &Sandbox, config: Value) {
    std::fs::write(sb.path("notify.json"), config.to_string()).unwrap();
}

/// `BOOTSTAGE_TIMEOUT=120` in /etc/bootstage/bootstage.env was a dead boot
/// ("time unit needed"). A bare number is seconds; a bad value names its variable.
#[tokio::test(flavor = "multi_thread")]
async fn durations_without_a_unit_are_seconds() {
    let emu = Emulator::start(Config {
        user_data: Some(common::b64("{\"a\":1}").into()),
        ..Config::default()
    })
    .await
    .unwrap();
    let sb = Sandbox::new();
    let url = emu.url();
    let run = |env: Option<&str>, flags: &[&str]| {
        let mut args = vec!["metadata", "--imds-endpoint", url.as_str()];
        args.extend_from_slice(flags);
        let mut cmd = sb.command(&args);
        if let Some(value) = env {
            cmd.env("BOOTSTAGE_TIMEOUT", value);
        }
        common::run(cmd)
    };
    for (env, flags) in [
        (Some("120"), &[][..]),
        (None, &["--timeout", "20"][..]),
        (None, &["--timeout", "1.5", "--user-data-wait", "1"][..]),
        (Some("2min"), &[][..]),
    ] {
        let out = run(env, flags).await;
        assert_eq!(out.code, 0, "{env:?} {flags:?}: {}", out.stderr);
    }
    let forms = "not a duration; use seconds (120) or a duration with a unit (90s, 2min, 1h30m)";
    let out = run(Some("abc"), &[]).await;
    assert_exit(
        &out,
        64,
        &format!("error: BOOTSTAGE_TIMEOUT=\"abc\": {forms}"),
    );
    let out = run(None, &["--timeout", "abc"]).await;
    assert_exit(
        &out,
        64,
        &format!("invalid value 'abc' for '--timeout <DURATION>': {forms}"),
    );
}

/// a stage that failed before its first status record (a bad setting, a missing
/// binary) sent no notice. Now only an earlier failed stage silences it.
#[tokio::test]
async fn a_stage_that_failed_before_its_first_record_is_heard_of() {
    let sb = Sandbox::new();
    let hook = Webhook::start(&[]).await;
    notify_config(&sb, json!({"url": hook.url}));
    let out = sb
        .run(&["notify", "failure", "--unit", "bootstage-s3-sync.service"])
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let got = hook.wait_for(1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body["stage"], "s3-sync");
    assert_eq!(
        got[0].body["error"],
        "bootstage-s3-sync.service failed before it wrote a status record (a bad setting, a missing binary, or a failure at start); see journalctl -u bootstage-s3-sync.service"
    );
}

/// the webhook and the command shared one deadline, so a webhook that never
/// answers left the command no time. They run at once now, each with the whole budget.
#[tokio::test]
async fn a_dead_webhook_leaves_the_command_its_time() {
    let sb = Sandbox::new();
    // Accepts connections (the kernel's backlog) and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", silent.local_addr().unwrap());
    let delivered = sb.path("delivered.json");
    notify_config(
        &sb,
        json!({"url": url, "command": format!("cat > {}", delivered.display()), "timeout": 2}),
    );
    let out = sb
        .run(&["notify", "failure", "--unit", "myapp.service"])
        .await;
    assert_exit(&out, 75, "the notice was not delivered: POST: ");
    assert!(!out.stderr.contains("command:"), "{}", out.stderr);
    let notice: Value = serde_json::from_slice(&std::fs::read(&delivered).unwrap()).unwrap();
    assert_eq!(
        (&notice["event"], &notice["unit"]),
        (&json!("failure"), &json!("myapp.service"))
    );
    // Ended at the notice's 2 s timeout, not the 30 s default: 8 s of headroom above it
    // is room for a loaded 2-core machine and still far short of 30 s.
    assert!(out.elapsed < Duration::from_secs(10), "{:?}", out.elapsed);
    drop(silent);
}

/// a mistyped `notify.headers` put the header value (a bearer token) into the
/// error, the journal, the status record and the notice. Errors name the key only.
#[tokio::test]
async fn a_bad_header_setting_never_shows_its_value() {
    const TOKEN: &str = "Bearer sekrit-0123456789";
    let cases = [
        (
            json!({"Authorization": [TOKEN]}),
            "bootstage.notify.headers.Authorization must be a string",
        ),
        (
            json!({"Authorization": {"v": TOKEN}}),
            "bootstage.notify.headers.Authorization must be a string",
        ),
        (
            json!({"Authorization": format!("{TOKEN}\nX-Evil: 1")}),
            "bootstage.notify.headers.Authorization is not a valid header value (a control character or a line break)",
        ),
        (
            json!({"Bad Name": TOKEN}),
            "bootstage.notify.headers.Bad Name is not a valid header name",
        ),
        (
            json!(TOKEN),
            "bootstage.notify.headers must be an object of header names to strings",
        ),
    ];
    for (headers, message) in cases {
        let sb = Sandbox::new();
        let hook = Webhook::start(&[]).await;
        let params =
            json!({"bootstage": {"notify": {"url": hook.url, "headers": headers, "timeout": 1}}});
        let file = sb.path("user-data.json");
        std::fs::write(&file, params.to_string()).unwrap();
        // The metadata stage checks bootstage's settings before it writes anything…
        let out = sb
            .run(&["metadata", "--user-data-file", file.to_str().unwrap()])
            .await;
        assert_exit(&out, 65, message);
        assert_eq!(sb.read("params.json"), None);
        // …and `notify` checks the image's file, which the metadata stage cannot fix.
        let image = sb.path("notify.json");
        std::fs::write(&image, params["bootstage"]["notify"].to_string()).unwrap();
        let out = sb
            .run(&["notify", "failure", "--unit", "bootstage-metadata.service"])
            .await;
        let in_file = message.replacen("bootstage.notify", &image.display().to_string(), 1);
        assert_exit(&out, 65, &in_file);
        for text in [out.stderr.as_str(), out.stdout.as_str()] {
            assert!(!text.contains("sekrit"), "{text}");
        }
        for record in std::fs::read_dir(sb.state().join("status")).unwrap() {
            let text = std::fs::read_to_string(record.unwrap().path()).unwrap();
            assert!(!text.contains("sekrit"), "{text}");
        }
        assert!(hook.received().is_empty());
    }
}

async fn metadata_with(sb: &Sandbox, user_data: &[u8]) -> common::Outcome {
    let file = sb.path("user-data");
    std::fs::write(&file, user_data).unwrap();
    sb.run(&["metadata", "--user-data-file", file.to_str().unwrap()])
        .await
}

/// a Unicode noncharacter made systemd reject the whole EnvironmentFile (every
/// `EnvironmentFile=` app failed to start) while dash, bash and launch read it fine.
/// a tag value with a NUL failed the whole stage. Parameters are refused by key;
/// such tags are left out of params.env with a warning.
#[tokio::test(flavor = "multi_thread")]
async fn values_systemd_cannot_take_are_refused_or_left_out() {
    for value in ["\u{FFFE}", "a\u{FDD0}b", "\u{10FFFF}", "x\u{1FFFF}"] {
        let sb = Sandbox::new();
        let out = metadata_with(&sb, json!({"db": {"pw": value}}).to_string().as_bytes()).await;
        assert_exit(
            &out,
            65,
            "parameter \"db.pw\" contains a Unicode noncharacter (U+FDD0-U+FDEF, U+xFFFE, U+xFFFF), which makes systemd reject the whole EnvironmentFile",
        );
        assert!(!out.stderr.contains(value));
    }
    let tags = [("Name", "web"), ("Weird", "a\u{FFFF}"), ("Nul", "a\0b")]
        .map(|(k, v)| (k.to_string(), v.to_string()));
    let emu = Emulator::start(Config {
        user_data: Some(common::b64("{\"a\":1}").into()),
        tags: Some(tags.into_iter().collect()),
        ..Config::default()
    })
    .await
    .unwrap();
    let sb = Sandbox::new();
    let out = sb.metadata(&emu.url(), &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let env = sb.read("params.env").unwrap();
    assert!(env.contains("BOOTSTAGE_TAG_NAME=\"web\"\n"), "{env}");
    assert!(
        !env.contains("TAG_WEIRD") && !env.contains("TAG_NUL"),
        "{env}"
    );
    for tag in ["Weird", "Nul"] {
        assert!(
            out.stderr.contains(&format!("an instance tag's value has a NUL or a Unicode noncharacter, which systemd's EnvironmentFile= cannot take; leaving it out of params.env tag=\"{tag}\"")),
            "{}",
            out.stderr
        );
    }
    let instance: Value = serde_json::from_str(&sb.read("instance.json").unwrap()).unwrap();
    assert_eq!(instance["tags"]["Weird"], "a\u{FFFF}");
}

/// names the shells or systemd treat specially are reserved, with the reason.
/// The first check shows why: bash --posix (/bin/sh on Amazon Linux) aborts on UID.
#[tokio::test]
async fn names_shells_and_systemd_treat_specially_are_reserved() {
    let sb = Sandbox::new();
    let file = sb.path("uid.env");
    std::fs::write(&file, "UID=\"1\"\nAFTER=\"x\"\n").unwrap();
    let posix = std::process::Command::new("bash")
        .args(["--posix", "-c", ". \"$1\"; echo \"after=$AFTER\"", "sh"])
        .arg(&file)
        .output()
        .unwrap();
    assert_ne!(
        String::from_utf8_lossy(&posix.stdout),
        "after=x\n",
        "bash --posix stops at UID"
    );

    let shell = "how the shell parses, finds commands or starts";
    let bash = "a variable bash keeps read-only or sets itself";
    let libc = "the C library and dynamic loader of every program";
    let systemd = "what systemd sets for a service";
    for (key, name, why) in [
        ("uid", "UID", bash),
        ("_", "_", bash),
        ("random", "RANDOM", bash),
        ("bash.argv0", "BASH_ARGV0", shell),
        ("optind", "OPTIND", shell),
        ("posixly_correct", "POSIXLY_CORRECT", shell),
        ("glibc.tunables", "GLIBC_TUNABLES", libc),
        ("malloc.arena_max", "MALLOC_ARENA_MAX", libc),
        ("credentials_directory", "CREDENTIALS_DIRECTORY", systemd),
        ("listen.pid", "LISTEN_PID", systemd),
        ("watchdog.usec", "WATCHDOG_USEC", systemd),
    ] {
        let sb = Sandbox::new();
        let out = metadata_with(&sb, json!({ key: "v" }).to_string().as_bytes()).await;
        assert_exit(
            &out,
            65,
            &format!("parameter \"{key}\" would be exported as {name}, a name reserved for {why}"),
        );
    }
}

/// each variable repeats its ancestors' names, so 14 KB of JSON rendered 7 MB
/// (every later exec failed with E2BIG) and a small gzip hundreds of MB. Names and the
/// file are capped, and refused before the memory is spent.
#[tokio::test]
async fn the_env_file_is_capped_and_rendering_stays_small() {
    // Long keys nested: every leaf's name would be kilobytes.
    let key = "k".repeat(120);
    let deep = json!({ key.clone(): { key.clone(): { key.clone(): 1 } } });
    let sb = Sandbox::new();
    let out = metadata_with(&sb, deep.to_string().as_bytes()).await;
    assert_exit(
        &out,
        65,
        "would be exported as a name of 362 bytes; names are limited to 255",
    );

    // 26^3 leaves under a 200-byte prefix, gzipped to a few KB: about 3.8 MB rendered.
    let letters: Vec<String> = (b'a'..=b'z').map(|c| (c as char).to_string()).collect();
    let level = |inner: &Value| -> Value {
        Value::Object(letters.iter().map(|l| (l.clone(), inner.clone())).collect())
    };
    let wide = json!({ "p".repeat(200): level(&level(&level(&json!(0)))) });
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut gz, wide.to_string().as_bytes()).unwrap();
    let gz = gz.finish().unwrap();
    assert!(gz.len() < 16 * 1024, "{} bytes of gzip", gz.len());
    let sb = Sandbox::new();
    let file = sb.path("user-data");
    std::fs::write(&file, &gz).unwrap();
    let rss = sb.path("rss");
    let cmd = sb.command_under(
        &["/usr/bin/time", "-f", "%M", "-o", rss.to_str().unwrap()],
        &["metadata", "--user-data-file", file.to_str().unwrap()],
    );
    let out = common::run(cmd).await;
    assert_exit(
        &out,
        65,
        "params.env would be over 1048576 bytes (at parameter",
    );
    // GNU time writes "Command exited with non-zero status 65" first.
    let text = std::fs::read_to_string(&rss).unwrap();
    let kib: u64 = text.lines().last().unwrap().trim().parse().unwrap();
    assert!(kib < 100 * 1024, "peak RSS {kib} KiB");
    assert_eq!(sb.read("params.env"), None);
}

fn hook(sb: &Sandbox, rel: &str, script: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = sb.path("hooks").join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn seed_for_hooks(sb: &Sandbox) {
    sb.seed("params.json", "{}");
    sb.seed(
        "instance.json",
        "{\"source\":\"flags\",\"instance_id\":\"i-0hooks\"}",
    );
    sb.seed("params.env", "");
    sb.seed("hooks.env", "");
}

/// hooks ran as root with no ownership or mode check, following symlinks: a
/// hook or directory another user can write handed that user root. Such hooks are
/// refused (77) before any hook runs, naming the path and why.
#[tokio::test]
async fn a_hook_anyone_but_root_can_change_is_refused_before_any_runs() {
    use std::os::unix::fs::PermissionsExt;
    type Make = fn(&Sandbox, &std::path::Path);
    let cases: [(&str, Make); 6] = [
        ("is owned by uid 12345", |_, h| {
            std::os::unix::fs::chown(h, Some(12345), None).unwrap()
        }),
        ("is writable by others (mode 775)", |_, h| {
            std::fs::set_permissions(h, std::fs::Permissions::from_mode(0o775)).unwrap()
        }),
        ("per-boot.d is writable by others (mode 777)", |sb, _| {
            let dir = sb.path("hooks/per-boot.d");
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap()
        }),
        // The guards: a directory on the way that others can write and that is not
        // sticky (anyone could rename what is below it), and a sticky hook directory
        // (anyone could add a hook to it).
        ("/hooks is writable by others (mode 777)", |sb, _| {
            let dir = sb.path("hooks");
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap()
        }),
        ("per-boot.d is writable by others (mode 1777)", |sb, _| {
            let dir = sb.path("hooks/per-boot.d");
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap()
        }),
        // A symlink into a tree the app owns (a synced destination with `owner`).
        ("app is owned by uid 12345", |sb, h| {
            let app = sb.path("app");
            std::fs::create_dir_all(&app).unwrap();
            std::fs::rename(h, app.join("20-evil")).unwrap();
            std::os::unix::fs::chown(&app, Some(12345), None).unwrap();
            std::os::unix::fs::symlink(app.join("20-evil"), h).unwrap();
        }),
    ];
    for (why, make) in cases {
        let sb = Sandbox::new();
        seed_for_hooks(&sb);
        let ran = sb.path("ran");
        hook(
            &sb,
            "per-instance.d/10-good",
            &format!("echo good >> {}", ran.display()),
        );
        let evil = hook(
            &sb,
            "per-boot.d/20-evil",
            &format!("echo evil >> {}", ran.display()),
        );
        make(&sb, &evil);
        let out = sb.run(&["hooks"]).await;
        assert_exit(&out, 77, "is not safe to run as root: ");
        assert!(out.stderr.contains(why), "{why}: {}", out.stderr);
        assert!(!ran.exists(), "{why}: no hook ran");
    }
    // A symlink to a hook only root can change runs.
    let sb = Sandbox::new();
    seed_for_hooks(&sb);
    let ran = sb.path("ran");
    let real = hook(
        &sb,
        "lib/30-real",
        &format!("echo real >> {}", ran.display()),
    );
    std::fs::create_dir_all(sb.path("hooks/per-boot.d")).unwrap();
    std::os::unix::fs::symlink(&real, sb.path("hooks/per-boot.d/30-link")).unwrap();
    let out = sb.run(&["hooks"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(std::fs::read_to_string(&ran).unwrap(), "real\n");
}

fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// a clone under /tmp failed the hook check, and the demo exited 77: a sticky
/// directory others can write was refused, although the entry below it is root's and the
/// sticky bit lets nobody else rename or remove it (systemd's `chase()` rule). Such a
/// directory is accepted on the way: above the hooks directory, and above the file of a
/// symlinked hook.
#[tokio::test]
async fn a_sticky_directory_on_the_way_is_trusted_when_the_entry_below_it_is_roots() {
    let sb = Sandbox::new();
    seed_for_hooks(&sb);
    let ran = sb.path("ran");
    hook(
        &sb,
        "per-boot.d/10-listed",
        &format!("echo listed >> {}", ran.display()),
    );
    // The sandbox is sticky and world-writable, as /tmp is; hooks/ below it is root's.
    set_mode(sb.dir.path(), 0o1777);
    // A symlinked hook whose file sits right in another such directory.
    let public = sb.path("public");
    std::fs::create_dir(&public).unwrap();
    set_mode(&public, 0o1777);
    let real = public.join("20-real");
    std::fs::write(
        &real,
        format!("#!/bin/sh\necho real >> {}\n", ran.display()),
    )
    .unwrap();
    set_mode(&real, 0o755);
    std::os::unix::fs::symlink(&real, sb.path("hooks/per-boot.d/20-link")).unwrap();

    let out = sb.run(&["hooks"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(std::fs::read_to_string(&ran).unwrap(), "listed\nreal\n");
}

/// The other half: below a sticky directory, an entry someone else owns is
/// refused (77, naming it): its owner can rename it and put anything in its place.
#[tokio::test]
async fn under_a_sticky_directory_an_entry_someone_else_owns_is_refused() {
    // hooks/ owned by another user, below a sticky world-writable sandbox.
    let sb = Sandbox::new();
    seed_for_hooks(&sb);
    let ran = sb.path("ran");
    let listed = hook(
        &sb,
        "per-boot.d/10-listed",
        &format!("echo listed >> {}", ran.display()),
    );
    set_mode(sb.dir.path(), 0o1777);
    std::os::unix::fs::chown(sb.path("hooks"), Some(12345), None).unwrap();
    let out = sb.run(&["hooks"]).await;
    assert_exit(
        &out,
        77,
        &format!(
            "hook {} is not safe to run as root: {} is owned by uid 12345\n",
            listed.display(),
            sb.path("hooks").display()
        ),
    );
    assert!(!ran.exists(), "no hook ran");

    // The file of a symlinked hook owned by another user, in a sticky directory.
    let sb = Sandbox::new();
    seed_for_hooks(&sb);
    let ran = sb.path("ran");
    let public = sb.path("public");
    std::fs::create_dir(&public).unwrap();
    set_mode(&public, 0o1777);
    let real = public.join("20-real");
    std::fs::write(
        &real,
        format!("#!/bin/sh\necho real >> {}\n", ran.display()),
    )
    .unwrap();
    set_mode(&real, 0o755);
    std::os::unix::fs::chown(&real, Some(12345), None).unwrap();
    std::fs::create_dir_all(sb.path("hooks/per-boot.d")).unwrap();
    let link = sb.path("hooks/per-boot.d/20-link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let out = sb.run(&["hooks"]).await;
    assert_exit(
        &out,
        77,
        &format!(
            "hook {} is not safe to run as root: {} is owned by uid 12345\n",
            link.display(),
            real.display()
        ),
    );
    assert!(!ran.exists(), "no hook ran");
}

/// the hooks stage took no lock, so `bootstage hooks` by hand beside the unit
/// could run a one-time hook twice. Runs hold the state lock and check markers under it.
#[tokio::test]
async fn two_hook_runs_at_once_run_a_one_time_hook_once() {
    let sb = Sandbox::new();
    seed_for_hooks(&sb);
    let log = sb.path("log");
    // A slow one-time hook: both runs start while it runs.
    hook(
        &sb,
        "per-instance.d/10-once",
        &format!("echo ran >> {}; sleep 1", log.display()),
    );
    let (a, b) = tokio::join!(sb.run(&["hooks"]), sb.run(&["hooks"]));
    assert_eq!((a.code, b.code), (0, 0), "{}\n{}", a.stderr, b.stderr);
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "ran\n");
    let waited = [&a, &b]
        .iter()
        .filter(|o| {
            o.stderr
                .contains("another bootstage run holds the state dir; waiting")
        })
        .count();
    assert_eq!(waited, 1, "{}\n{}", a.stderr, b.stderr);
}

/// Hooks inherited bootstage's whole environment: a `PERL5OPT` or `BASH_ENV` in the
/// shell that ran `bootstage hooks` (or a unit's `Environment=`) reached every root hook.
/// A hook now gets a clean environment: a fixed PATH, the locale, the parameters and
/// bootstage's two variables, exactly.
#[tokio::test]
async fn a_hook_runs_in_a_clean_environment_with_the_parameters() {
    let sb = Sandbox::new();
    sb.seed("params.json", "{}");
    sb.seed(
        "instance.json",
        "{\"source\":\"flags\",\"instance_id\":\"i-0env\"}",
    );
    sb.seed("params.env", "DB_HOST=\"db.internal\"\nIMPORTED=\"x\"\n");
    sb.seed("hooks.env", "DB_HOST=\"db.internal\"\n");
    let out_file = sb.path("hook-env");
    hook(
        &sb,
        "per-boot.d/10-env",
        &format!("env -0 > {}", out_file.display()),
    );
    let mut cmd = sb.command(&["hooks"]);
    cmd.env("PERL5OPT", "-Mhostile")
        .env("BASH_ENV", "/tmp/hostile")
        .env("LANG", "C.UTF-8")
        .env("PATH", "/hostile/bin:/usr/bin:/bin");
    let out = common::run(cmd).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let text = std::fs::read(&out_file).unwrap();
    let mut vars: Vec<String> = text
        .split(|b| *b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| String::from_utf8_lossy(v).into_owned())
        // The shell running the hook adds its own.
        .filter(|v| !v.starts_with("PWD=") && !v.starts_with("SHLVL=") && !v.starts_with("_="))
        .collect();
    vars.sort();
    assert_eq!(
        vars,
        [
            "BOOTSTAGE_HOOK=per-boot.d/10-env".to_string(),
            format!("BOOTSTAGE_STATE_DIR={}", sb.state().display()),
            "DB_HOST=db.internal".into(),
            "HOME=/root".into(),
            "LANG=C.UTF-8".into(),
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ]
    );
}

/// `bootstage.watch` without the watch drop-in was ignored in silence: the operator
/// believed the destinations were kept in step. The s3-sync stage now warns, naming the
/// drop-in, and `status` says so while no watcher runs.
#[tokio::test]
async fn a_watch_setting_no_unit_acts_on_is_a_warning_naming_the_drop_in() {
    let sb = Sandbox::new();
    let src = sb.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.conf"), "x").unwrap();
    let params = json!({"bootstage": {
        "sync": [{"from": format!("file://{}/", src.display()), "to": sb.path("dest")}],
        "watch": {"interval": "5m"},
    }});
    sb.seed("params.json", &params.to_string());
    sb.seed(
        "instance.json",
        "{\"source\":\"flags\",\"instance_id\":\"i-0watch\"}",
    );
    sb.seed("params.env", "");
    sb.seed("hooks.env", "");
    let warning = "bootstage.watch is set, but s3-sync runs without --watch: install the watch drop-in (systemd/examples/bootstage-s3-sync.service.d/watch.conf as /etc/systemd/system/bootstage-s3-sync.service.d/watch.conf) or remove bootstage.watch";
    let out = sb.run(&["s3-sync", "--sync-timeout", "20s"]).await;
    assert_exit(&out, 0, warning);
    let out = sb.run(&["status"]).await;
    assert!(
        out.stdout.contains(&format!("warning: {warning}\n")),
        "{}",
        out.stdout
    );
    let out = sb.run(&["status", "--json"]).await;
    let doc: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(doc["warnings"], json!([warning]));
}

/// A root hook that is a symlink through a link someone else controls: the operator's
/// `per-boot.d/20-tool -> app/tool`, and the app (owning `app/`) re-points `app/tool` at
/// any root-owned program, which then ran as the hook. Only the hook's final file and its
/// directories were checked, not the links on the way. Each link followed must now be
/// root's, in a directory only root can change.
#[tokio::test]
async fn a_hook_reached_through_a_link_someone_else_controls_is_refused() {
    let sb = Sandbox::new();
    seed_for_hooks(&sb);
    let ran = sb.path("ran");
    // A root-owned program the app should never be able to choose.
    let other = hook(
        &sb,
        "lib/other",
        &format!("echo chosen-by-the-app >> {}", ran.display()),
    );
    let app = sb.path("app");
    std::fs::create_dir(&app).unwrap();
    std::os::unix::fs::chown(&app, Some(65534), Some(65534)).unwrap();
    std::fs::create_dir_all(sb.path("hooks/per-boot.d")).unwrap();
    std::os::unix::fs::symlink(app.join("tool"), sb.path("hooks/per-boot.d/20-tool")).unwrap();
    // The app's own link, in its own directory.
    std::os::unix::fs::symlink(&other, app.join("tool")).unwrap();
    std::os::unix::fs::lchown(app.join("tool"), Some(65534), Some(65534)).unwrap();
    let out = sb.run(&["hooks"]).await;
    assert_exit(
        &out,
        77,
        &format!(
            "{} is a symlink owned by uid 65534",
            app.join("tool").display()
        ),
    );
    // A link of root's in the app's directory: the app can replace it at any moment.
    std::fs::remove_file(app.join("tool")).unwrap();
    std::os::unix::fs::symlink(&other, app.join("tool")).unwrap();
    let out = sb.run(&["hooks"]).await;
    assert_exit(
        &out,
        77,
        &format!("{} is owned by uid 65534", app.display()),
    );
    assert!(!ran.exists(), "a hook ran");
    // Root's links in root's directories are followed.
    std::os::unix::fs::chown(&app, Some(0), Some(0)).unwrap();
    let out = sb.run(&["hooks"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        std::fs::read_to_string(&ran).unwrap(),
        "chosen-by-the-app\n"
    );
}

/// An app launched as root gets the imported variables that no hook gets: whoever writes
/// the import path chooses values in a root process. `launch` says so, naming the fix.
#[tokio::test]
async fn launching_as_root_with_imported_variables_is_a_warning() {
    let sb = Sandbox::new();
    seed_for_hooks(&sb);
    sb.seed("params.env", "DB_HOST=\"db.internal\"\nFROM_IMPORT=\"x\"\n");
    sb.seed("hooks.env", "DB_HOST=\"db.internal\"\n");
    let out = sb.run(&["launch", "--", "/bin/true"]).await;
    assert_exit(
        &out,
        0,
        "the app runs as root with variables an import set: run it as its own user (User=, systemd/examples/myapp-user.service) imported=1",
    );
    sb.seed("params.env", "DB_HOST=\"db.internal\"\n");
    let out = sb.run(&["launch", "--", "/bin/true"]).await;
    assert_exit(&out, 0, "launching");
    assert!(
        !out.stderr.contains("variables an import set"),
        "{}",
        out.stderr
    );
}

/// A lifecycle hook configured with no watcher ever started (the unit masked or not
/// installed) was silent: nothing kept the hook alive or held a failed instance, and the
/// group's heartbeat timeout decided. `status` and the ready notice now say so, naming
/// the unit.
#[tokio::test]
async fn a_lifecycle_hook_no_watcher_keeps_alive_is_a_warning_naming_the_unit() {
    let sb = Sandbox::new();
    let file = sb.path("user-data.json");
    std::fs::write(
        &file,
        r#"{"bootstage": {"lifecycle": {"asg": {"hook": "launch"}}}}"#,
    )
    .unwrap();
    let user_data = file.to_str().unwrap();
    let out = sb
        .run(&[
            "hooks",
            "--user-data-file",
            user_data,
            "--fact",
            "instance-id=i-0lc",
        ])
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let warning = "bootstage.lifecycle.asg is set, but bootstage-lifecycle.service never started: nothing keeps the launch hook alive or holds a failed instance; install the unit and make sure it is not masked (systemctl unmask bootstage-lifecycle.service; bootstage.target wants it)";
    let out = sb.run(&["status"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains(&format!("warning: {warning}\n")),
        "{}",
        out.stdout
    );
    // Once a watcher has started this boot, nothing to say.
    std::fs::create_dir_all(sb.state().join("lifecycle")).unwrap();
    std::fs::write(
        sb.state().join("lifecycle/record.json"),
        r#"{"watcher_started_at": "2026-12-06T00:00:00Z", "heartbeats": 0}"#,
    )
    .unwrap();
    let out = sb.run(&["status"]).await;
    assert!(!out.stdout.contains("warning:"), "{}", out.stdout);
}
