//! The user-data decoding matrix, through the library and through the binary
//! (`--user-data-file`), with exact error messages that never echo content.

use crate::common;

use std::io::Write;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use bootstage::imds::userdata::{DecodeError, Layers, MAX_RAW, decode};
use common::Sandbox;
use serde_json::json;

const JSON: &str = r#"{"a":1,"b":{"c":"d?>>~~"},"e":[true,null]}"#;

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn expected() -> serde_json::Map<String, serde_json::Value> {
    json!({"a": 1, "b": {"c": "d?>>~~"}, "e": [true, null]})
        .as_object()
        .unwrap()
        .clone()
}

#[test]
fn every_accepted_form_decodes_to_the_same_object() {
    // "d?>>~~" makes the standard and URL-safe alphabets differ (+/ vs -_).
    assert!(STANDARD.encode(JSON).contains(['+', '/']));
    assert!(URL_SAFE.encode(JSON).contains(['-', '_']));
    let wrapped: String = STANDARD
        .encode(JSON)
        .as_bytes()
        .chunks(16)
        .map(|c| format!("{}\r\n", std::str::from_utf8(c).unwrap()))
        .collect();
    let forms: Vec<(&str, Vec<u8>)> = vec![
        ("plain JSON", JSON.into()),
        (
            "plain JSON with whitespace",
            format!("\n  {JSON}\n\n").into(),
        ),
        ("plain JSON with a BOM", format!("\u{feff}{JSON}").into()),
        ("base64 padded", STANDARD.encode(JSON).into()),
        ("base64 unpadded", STANDARD_NO_PAD.encode(JSON).into()),
        ("base64 wrapped", wrapped.into()),
        ("base64 URL-safe", URL_SAFE.encode(JSON).into()),
        (
            "base64 URL-safe unpadded",
            URL_SAFE_NO_PAD.encode(JSON).into(),
        ),
        (
            "base64 with trailing newline",
            format!("{}\n", STANDARD.encode(JSON)).into(),
        ),
        ("gzip", gzip(JSON.as_bytes())),
        (
            "base64 of gzip",
            STANDARD.encode(gzip(JSON.as_bytes())).into(),
        ),
    ];
    for (name, raw) in forms {
        assert_eq!(decode(&raw).as_ref(), Ok(&expected()), "{name}");
    }
}

#[test]
fn failures_name_the_step_and_position() {
    let cases: Vec<(&str, Vec<u8>, DecodeError)> = vec![
        ("empty", b"  \n".to_vec(), DecodeError::Empty),
        (
            "script",
            b"#!/bin/bash\necho hi".to_vec(),
            DecodeError::Script,
        ),
        (
            "cloud-config",
            b"#cloud-config\nusers: []".to_vec(),
            DecodeError::Script,
        ),
        (
            "bad char",
            b"eyJh\nIjox!Q==".to_vec(),
            DecodeError::Base64Char { line: 2, column: 5 },
        ),
        (
            "mixed alphabets",
            b"ab+_".to_vec(),
            DecodeError::Base64Char { line: 1, column: 3 },
        ),
        (
            "bad length",
            b"eyJhIjoxf".to_vec(),
            DecodeError::Base64("its length is not possible for base64"),
        ),
        (
            "base64 of bad JSON",
            STANDARD.encode("{\n\"a\": 1,\n\"b\" 2}").into(),
            DecodeError::Json {
                layers: Layers::Base64,
                line: 3,
                column: 5,
                reason: " (expected `:`)".into(),
            },
        ),
        (
            "bad plain JSON",
            b"{\"a\": tru}".to_vec(),
            DecodeError::Json {
                layers: Layers::Plain,
                line: 1,
                column: 10,
                reason: " (expected ident)".into(),
            },
        ),
        (
            "trailing",
            b"{} {}".to_vec(),
            DecodeError::Json {
                layers: Layers::Plain,
                line: 1,
                column: 4,
                reason: " (trailing characters)".into(),
            },
        ),
        (
            "array",
            STANDARD.encode("[1,2]").into(),
            DecodeError::NotObject(Layers::Base64, "an array"),
        ),
        (
            "string",
            STANDARD.encode("\"x\"").into(),
            DecodeError::NotObject(Layers::Base64, "a string"),
        ),
        (
            "null gz",
            STANDARD.encode(gzip(b"null")).into(),
            DecodeError::NotObject(Layers::Base64Gzip, "null"),
        ),
        (
            "over 16 KiB",
            vec![b'a'; MAX_RAW + 1],
            DecodeError::TooLarge(MAX_RAW + 1),
        ),
    ];
    for (name, raw, want) in cases {
        assert_eq!(decode(&raw), Err(want), "{name}");
    }
    let truncated = STANDARD.encode(&gzip(JSON.as_bytes())[..20]);
    assert!(matches!(
        decode(truncated.as_bytes()),
        Err(DecodeError::Gzip(Layers::Base64Gzip, _))
    ));
    let bomb = STANDARD.encode(gzip(&vec![b' '; 1 << 20]));
    assert!(bomb.len() < MAX_RAW);
    assert_eq!(
        decode(bomb.as_bytes()),
        Err(DecodeError::Decompressed(Layers::Base64Gzip))
    );
}

#[test]
fn exactly_16_kib_is_accepted() {
    let filler = "x".repeat(MAX_RAW - 12);
    let raw = format!("{{\"k\":\"{filler}\"}}");
    let raw = format!("{raw}{}", " ".repeat(MAX_RAW - raw.len()));
    assert_eq!(raw.len(), MAX_RAW);
    assert!(decode(raw.as_bytes()).is_ok());
}

/// Through the binary: exit codes, the message, nothing written, and no echo of a secret.
#[tokio::test]
async fn bad_user_data_is_exit_65_with_no_echo_and_no_write() {
    let secret = "TOPSECRET-7f3a";
    let cases = [
        (
            format!("{{\"password\": \"{secret}\",}}"),
            "JSON invalid at line 1 column",
        ),
        (
            STANDARD.encode(format!("{{\"password\": {secret}}}")),
            "base64 ok, JSON invalid at line 1 column 14",
        ),
        (
            format!("{secret}!!"),
            "not base64: unexpected character at line 1 column 15",
        ),
        (
            STANDARD.encode(format!("[\"{secret}\"]")),
            "base64 ok, JSON is an array, not an object",
        ),
        (
            format!("{{\"a\": {{\"b\": \"{secret}\"}}, \"a_b\": 1}}"),
            "parameters \"a.b\" and \"a_b\" would both be exported as A_B",
        ),
        (
            format!("{{\"path\": \"{secret}\"}}"),
            "exported as PATH, a name reserved",
        ),
        (
            format!("{{\"k\": \"{secret}\\u0000\"}}"),
            "parameter \"k\" contains a NUL character",
        ),
    ];
    for (raw, message) in cases {
        let sb = Sandbox::new();
        std::fs::write(sb.path("user-data"), &raw).unwrap();
        let mut cmd = sb.command(&[
            "metadata",
            "--user-data-file",
            sb.path("user-data").to_str().unwrap(),
        ]);
        cmd.env("BOOTSTAGE_LOG", "trace");
        let out = common::run(cmd).await;
        assert_eq!(out.code, 65, "{raw}: {}", out.stderr);
        assert!(
            out.stderr.contains(message),
            "want {message:?} in {}",
            out.stderr
        );
        assert!(
            !out.stderr.contains(secret),
            "secret echoed: {}",
            out.stderr
        );
        assert_eq!(sb.read("params.json"), None);
        assert_eq!(sb.read("params.env"), None);
    }
}

#[tokio::test]
async fn a_user_data_file_with_facts_from_flags() {
    let sb = Sandbox::new();
    std::fs::write(sb.path("user-data"), STANDARD.encode(JSON)).unwrap();
    let file = sb.path("user-data");
    let out = sb
        .run(&[
            "metadata",
            "--user-data-file",
            file.to_str().unwrap(),
            "--fact",
            "region=eu-central-1",
            "--fact",
            "instance-id=i-local",
        ])
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        sb.read("params.json").unwrap(),
        format!("{}\n", serde_json::to_string_pretty(&expected()).unwrap())
    );
    assert_eq!(
        sb.read("params.env").unwrap(),
        "A=\"1\"\nBOOTSTAGE_INSTANCE_ID=\"i-local\"\nBOOTSTAGE_REGION=\"eu-central-1\"\nB_C=\"d?>>~~\"\nE=\"[true,null]\"\n"
    );
    let facts: serde_json::Value =
        serde_json::from_str(&sb.read("instance.json").unwrap()).unwrap();
    assert_eq!(facts["source"], "flags");
    assert_eq!(facts["mac"], serde_json::Value::Null);
    assert!(
        out.stderr.contains("some instance facts are absent"),
        "{}",
        out.stderr
    );

    // No file at all is "no user-data"; an unknown fact is bad usage.
    let missing = sb.path("nope");
    let out = sb
        .run(&["metadata", "--user-data-file", missing.to_str().unwrap()])
        .await;
    assert_eq!(out.code, 66, "{}", out.stderr);
    let out = sb
        .run(&[
            "metadata",
            "--user-data-file",
            file.to_str().unwrap(),
            "--fact",
            "colour=red",
        ])
        .await;
    assert_eq!(out.code, 64, "{}", out.stderr);
    let out = sb.run(&["metadata", "--no-such-flag"]).await;
    assert_eq!(out.code, 64, "{}", out.stderr);
}

#[test]
fn numbers_and_key_order_are_kept_exactly() {
    let raw = r#"{"z": 1.50, "a": 12345678901234567890123, "m": -0.0, "e": 1e400}"#;
    let params = decode(raw.as_bytes()).unwrap();
    // Digits and order are kept; only an exponent gains its sign (1e400 → 1e+400).
    assert_eq!(
        serde_json::to_string(&params).unwrap(),
        r#"{"z":1.50,"a":12345678901234567890123,"m":-0.0,"e":1e+400}"#
    );
}

/// bootstage's parameters beside cloud-init's parts: an app parameter, bootstage's own
/// settings, and a value that must never reach a message.
const BESIDE: &str = r#"{"app":{"port":8080,"token":"TOPSECRET-c10d"},"bootstage":{"sync":[]}}"#;
const CLOUD_CONFIG: &str = "#cloud-config\nruncmd:\n  - echo CLOUDSECRET-77 > /root/x\n";
const BOUNDARY: &str = "===============5474468523413456036==";

/// A multipart message as cloud-init's `make-mime` (Python's email module) writes it, parts
/// given as (Content-Type, body); `crlf` for a message that went through a CRLF tool.
fn multipart(parts: &[(&str, &[u8])], crlf: bool) -> Vec<u8> {
    let nl: &[u8] = if crlf { b"\r\n" } else { b"\n" };
    let mut out = Vec::new();
    let mut line = |text: &[u8]| {
        out.extend_from_slice(text);
        out.extend_from_slice(nl);
    };
    line(format!("Content-Type: multipart/mixed; boundary=\"{BOUNDARY}\"").as_bytes());
    line(b"MIME-Version: 1.0");
    line(b"");
    for (content_type, body) in parts {
        line(format!("--{BOUNDARY}").as_bytes());
        line(format!("Content-Type: {content_type}; charset=\"us-ascii\"").as_bytes());
        line(b"MIME-Version: 1.0");
        line(b"Content-Transfer-Encoding: 7bit");
        line(b"Content-Disposition: attachment; filename=\"part\"");
        line(b"");
        line(body);
    }
    line(format!("--{BOUNDARY}--").as_bytes());
    out
}

/// The forms the issue asks for: cloud-init's part first and last, `application/json` and
/// `text/x-bootstage`, CRLF, and the whole message gzipped (`write-mime-multipart --gzip`).
fn mime_forms() -> Vec<(&'static str, Vec<u8>)> {
    let cloud = ("text/cloud-config", CLOUD_CONFIG.as_bytes());
    let json = ("application/json", BESIDE.as_bytes());
    let own = ("text/x-bootstage", BESIDE.as_bytes());
    vec![
        ("cloud-init first", multipart(&[cloud, json], false)),
        ("bootstage first", multipart(&[json, cloud], false)),
        (
            "text/x-bootstage last, CRLF",
            multipart(&[cloud, own], true),
        ),
        ("gzipped whole", gzip(&multipart(&[cloud, own], false))),
    ]
}

fn beside() -> serde_json::Value {
    serde_json::from_str(BESIDE).unwrap()
}

#[tokio::test]
async fn mime_user_data_from_a_file_in_both_orders_and_validate_agrees() {
    for (name, raw) in mime_forms() {
        let sb = Sandbox::new();
        let file = sb.path("user-data");
        std::fs::write(&file, &raw).unwrap();
        let out = sb
            .run(&["metadata", "--user-data-file", file.to_str().unwrap()])
            .await;
        assert_eq!(out.code, 0, "{name}: {}", out.stderr);
        let params: serde_json::Value =
            serde_json::from_str(&sb.read("params.json").unwrap()).unwrap();
        assert_eq!(params, beside(), "{name}");
        let env = sb.read("params.env").unwrap();
        assert!(env.contains("APP_PORT=\"8080\"\n"), "{name}: {env}");
        assert!(!env.contains("CLOUDSECRET"), "{name}: {env}");

        let out = sb.run(&["validate", file.to_str().unwrap()]).await;
        common::assert_exit(&out, 0, "valid;");
        assert_eq!(out.stdout, "APP_PORT\nAPP_TOKEN\n", "{name}");
        assert!(!out.stderr.contains("SECRET"), "{name}: {}", out.stderr);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn mime_user_data_from_imds_in_both_orders() {
    for (name, raw) in mime_forms() {
        let emu = imds_emulator::Emulator::start(imds_emulator::Config {
            user_data: Some(raw),
            ..imds_emulator::Config::default()
        })
        .await
        .unwrap();
        let sb = Sandbox::new();
        let out = sb.metadata(&emu.url(), &[]).await;
        assert_eq!(out.code, 0, "{name}: {}", out.stderr);
        let params: serde_json::Value =
            serde_json::from_str(&sb.read("params.json").unwrap()).unwrap();
        assert_eq!(params, beside(), "{name}");
        let env = sb.read("params.env").unwrap();
        assert!(env.contains("APP_PORT=\"8080\"\n"), "{name}: {env}");
        assert!(
            env.contains("BOOTSTAGE_INSTANCE_ID=\"i-0123456789abcdef0\"\n"),
            "{name}: {env}"
        );
    }
}

/// Through the binary: two parts of bootstage's (65, both named), none (66 as with no
/// user-data; --allow-empty boots with none), malformed MIME (65); nothing echoed or written.
#[tokio::test]
async fn mime_failures_through_the_binary() {
    let cloud = ("text/cloud-config", CLOUD_CONFIG.as_bytes());
    let json = ("application/json", BESIDE.as_bytes());
    let own = ("text/x-bootstage", BESIDE.as_bytes());
    let truncated = multipart(&[cloud, json], false);
    let truncated = truncated[..truncated.len() - 10].to_vec();
    let cases: [(Vec<u8>, &[&str], i32, &str); 5] = [
        (
            multipart(&[json, cloud, own], false),
            &[],
            65,
            "user-data is invalid: MIME parts 1, 3 all hold bootstage parameters; keep one",
        ),
        (
            multipart(&[cloud], false),
            &[],
            66,
            "no MIME part holds bootstage parameters",
        ),
        (
            truncated,
            &[],
            65,
            "MIME malformed: the closing boundary is missing (truncated?)",
        ),
        (
            multipart(&[cloud, ("application/json", b"{\"TOPSECRET\" 1}")], false),
            &[],
            65,
            "MIME part 2: JSON invalid at line 1 column 14 (expected `:`)",
        ),
        (
            multipart(&[cloud], false),
            &["--allow-empty"],
            0,
            "going on with empty parameters (--allow-empty)",
        ),
    ];
    for (raw, extra, code, message) in cases {
        let sb = Sandbox::new();
        let file = sb.path("user-data");
        std::fs::write(&file, &raw).unwrap();
        let mut args = vec!["metadata", "--user-data-file", file.to_str().unwrap()];
        args.extend_from_slice(extra);
        let mut cmd = sb.command(&args);
        cmd.env("BOOTSTAGE_LOG", "trace");
        let out = common::run(cmd).await;
        common::assert_exit(&out, code, message);
        assert!(!out.stderr.contains("SECRET"), "echoed: {}", out.stderr);
        if code == 0 {
            assert_eq!(sb.read("params.json").unwrap(), "{}\n");
        } else {
            assert_eq!(sb.read("params.json"), None);
            let out = sb.run(&["validate", file.to_str().unwrap()]).await;
            common::assert_exit(&out, code, message);
        }
    }
}

/// The README's Python example (the email module, as cloud-init's `make-mime`) builds
/// user-data that `validate` and `metadata` accept as they are, so the example cannot rot.
#[tokio::test]
async fn the_readmes_mime_example_boots() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let script = readme
        .split("```python\n")
        .find(|block| block.starts_with("# make-user-data.py"))
        .and_then(|block| block.split("```").next())
        .expect("the README's make-user-data.py example");
    let sb = Sandbox::new();
    std::fs::write(sb.path("make-user-data.py"), script).unwrap();
    std::fs::write(sb.path("cloud-config.yaml"), CLOUD_CONFIG).unwrap();
    std::fs::write(sb.path("params.json"), BESIDE).unwrap();
    let made = std::process::Command::new("python3")
        .arg("make-user-data.py")
        .current_dir(sb.path(""))
        .output()
        .expect("python3");
    assert!(made.status.success(), "{made:?}");
    let file = sb.path("user-data");
    std::fs::write(&file, &made.stdout).unwrap();
    let out = sb.run(&["validate", file.to_str().unwrap()]).await;
    common::assert_exit(&out, 0, "valid;");
    let out = sb
        .run(&["metadata", "--user-data-file", file.to_str().unwrap()])
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let params: serde_json::Value = serde_json::from_str(&sb.read("params.json").unwrap()).unwrap();
    assert_eq!(params, beside());
}
