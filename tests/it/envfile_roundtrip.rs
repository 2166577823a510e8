//! params.env read back by real `dash` and `bash` (`set -a; . params.env`), byte for
//! byte, for thousands of adversarial values. The systemd half of the round trip is in
//! the boot test, with the same generator.

use crate::common;

use std::collections::BTreeMap;

use base64::Engine;
use bootstage::state::envfile::Env;
use common::{Sandbox, adversarial, shell_readback};
use std::io::Write;

fn params(values: &[String]) -> serde_json::Map<String, serde_json::Value> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| (format!("K{i:04}"), serde_json::Value::String(v.clone())))
        .collect()
}

fn expected(values: &[String]) -> BTreeMap<String, String> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| (format!("K{i:04}"), v.clone()))
        .collect()
}

fn check(shell: &str, file: &std::path::Path, want: &BTreeMap<String, String>) {
    let mut got = shell_readback(shell, file);
    got.retain(|k, _| !k.starts_with("BOOTSTAGE_"));
    assert_eq!(got.len(), want.len(), "{shell}: variable count");
    for (k, v) in want {
        assert_eq!(got.get(k), Some(v), "{shell}: {k}");
    }
}

#[test]
fn thousands_of_values_survive_dash_and_bash() {
    let values = adversarial::values(3000, 0x5eed);
    let env = Env::from_params(&params(&values)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("params.env");
    std::fs::write(&file, env.render()).unwrap();
    let want = expected(&values);
    for shell in ["dash", "bash"] {
        check(shell, &file, &want);
    }
    assert!(
        !std::path::Path::new("/tmp/bootstage-pwned").exists(),
        "a value was executed"
    );
}

/// The same through the binary: user-data in, params.env out, shells read it back.
#[tokio::test]
async fn end_to_end_through_the_metadata_stage() {
    let values = adversarial::values(400, 42);
    let json = serde_json::to_vec(&params(&values)).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&json).unwrap();
    let user_data = base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap());
    assert!(user_data.len() <= 16 * 1024, "{} bytes", user_data.len());

    let sb = Sandbox::new();
    std::fs::write(sb.path("user-data"), user_data).unwrap();
    let out = sb
        .run(&[
            "metadata",
            "--user-data-file",
            sb.path("user-data").to_str().unwrap(),
        ])
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let want = expected(&values);
    for shell in ["dash", "bash"] {
        check(shell, &sb.state().join("params.env"), &want);
    }
}
