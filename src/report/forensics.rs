//! A failed boot's forensics, before the instance goes: the journal's excerpt for
//! bootstage's units and the app's, read by `journalctl` as a bounded child, and the
//! objects (`journal.log`, `status.json`, `records/<stage>.json`) put under the prefix
//! `bootstage.report.logs` names, `{instance_id}` and `{boot_id}` expanded. Every step
//! within one deadline; a failure is said (the code and the key, never a value) and
//! returned, for the caller to log and go on.
//!
//! The journal holds no value of a parameter: bootstage logs keys, paths and object
//! keys only (ARCHITECTURE.md), so the excerpt is as value-free as the journal.

use std::path::Path;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;

use crate::aws::{self, Aws};
use crate::base::child;
use crate::base::retry::{self, Deadline};
use crate::report::capture;
use crate::settings::report::Logs;

/// One object of the forensics: its name under the prefix and its body.
#[derive(Debug, Clone)]
pub struct Object {
    pub name: String,
    pub body: Vec<u8>,
    pub content_type: &'static str,
}

/// The key prefix for this boot: `{instance_id}` and `{boot_id}` replaced. A value that
/// is not a plain identifier (letters, digits, `-`) is replaced by `unknown`, so no fact
/// can add a segment or a placeholder to the key.
pub fn prefix(logs: &Logs, instance_id: Option<&str>, boot_id: Option<&str>) -> String {
    let plain = |v: Option<&str>| match v {
        Some(v) if !v.is_empty() && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') => {
            v.to_string()
        }
        _ => "unknown".to_string(),
    };
    logs.prefix
        .replace("{instance_id}", &plain(instance_id))
        .replace("{boot_id}", &plain(boot_id))
}

/// The journal's reader: this boot (`boot`, the journal's own ID of it, else `-b`'s idea
/// of it), `--unit=` for `bootstage-*` and each of `units` (the failed unit, the
/// settings' `units`) not already in it, the last `lines` lines, no pager.
pub fn journal_command(
    journalctl: &Path,
    boot: Option<&str>,
    units: &[String],
    lines: u32,
) -> Vec<String> {
    let mut args = vec![
        journalctl.display().to_string(),
        match boot {
            Some(id) => format!("--boot={id}"),
            None => "-b".into(),
        },
        "-o".into(),
        "short-monotonic".into(),
        "--no-pager".into(),
        "--lines".into(),
        lines.to_string(),
        "--unit=bootstage-*".into(),
    ];
    // bootstage's own units are in the pattern already.
    for unit in units.iter().filter(|u| !u.starts_with("bootstage-")) {
        let arg = format!("--unit={unit}");
        if !args.contains(&arg) {
            args.push(arg);
        }
    }
    args
}

/// The boot the journal's newest entry belongs to (its `_BOOT_ID`, 32 hex digits, the
/// form `--boot=` takes), asked of `journalctl` within `limit`; `None` when it says
/// nothing usable. Not the kernel's `boot_id` that `-b` alone goes by: a unit with
/// `ProtectKernelTunables=` in a container (systemd-nspawn) reads the host's there, which
/// journald never stamped, and `-b` then finds no entry. The newest entry is this boot's:
/// systemd logged the failure unit's start.
pub async fn journal_boot(journalctl: &Path, limit: Duration) -> Option<String> {
    let mut command = tokio::process::Command::new(journalctl);
    command.args([
        "--lines=1",
        "--output=json",
        "--output-fields=_BOOT_ID",
        "--no-pager",
    ]);
    let captured = capture::tail(command, 64 * 1024, limit).await.ok()?;
    let last = String::from_utf8_lossy(&captured.bytes);
    let entry: serde_json::Value = serde_json::from_str(last.lines().last()?).ok()?;
    let id = entry.get("_BOOT_ID")?.as_str()?;
    boot_id(id).map(|_| id.to_ascii_lowercase())
}

/// A journal's `_BOOT_ID` (32 hex digits) as the kernel writes a boot ID; `None` for
/// anything else.
pub fn boot_id(id: &str) -> Option<String> {
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let id = id.to_ascii_lowercase();
    Some(format!(
        "{}-{}-{}-{}-{}",
        &id[..8],
        &id[8..12],
        &id[12..16],
        &id[16..20],
        &id[20..]
    ))
}

/// The excerpt: the journal's last lines, at most `max` bytes of them, within `limit`.
pub async fn journal(argv: &[String], max: u64, limit: Duration) -> Result<Object, String> {
    let mut command = tokio::process::Command::new(&argv[0]);
    command.args(&argv[1..]);
    let captured = capture::tail(command, max as usize, limit)
        .await
        .map_err(|e| format!("{}: {e}", argv[0]))?;
    if !captured.status.success() {
        // journalctl says why on its standard error (ours: the journal), and what it
        // printed before is still worth keeping.
        tracing::warn!(
            "{} {}: the excerpt holds what it printed",
            argv[0],
            child::describe(captured.status)
        );
    }
    let mut body = captured.bytes;
    if captured.cut {
        let mut marked =
            format!("-- bootstage: earlier lines cut to keep {max} bytes --\n").into_bytes();
        marked.append(&mut body);
        body = marked;
    }
    Ok(Object {
        name: "journal.log".into(),
        body,
        content_type: "text/plain; charset=utf-8",
    })
}

/// Puts each object at `bucket`/`prefix``name`, in order, within `deadline`; stops at
/// the first that fails (a refusal holds for the others too). Returns how many went.
pub async fn upload(
    aws: &Aws,
    bucket: &str,
    prefix: &str,
    objects: &[Object],
    deadline: Deadline,
) -> Result<usize, String> {
    let s3 = aws.s3();
    for (done, object) in objects.iter().enumerate() {
        let key = format!("{prefix}{}", object.name);
        let put = aws::call("S3", "s3:PutObject", retry::BACKOFF, deadline, || {
            s3.put_object()
                .bucket(bucket)
                .key(&key)
                .content_type(object.content_type)
                .body(ByteStream::from(object.body.clone()))
                .send()
        })
        .await;
        if let Err(e) = put {
            return Err(format!(
                "s3://{bucket}/{key}: {e} ({done} of {} uploaded)",
                objects.len()
            ));
        }
        tracing::debug!(key = %key, bytes = object.body.len(), "uploaded");
    }
    Ok(objects.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logs(prefix: &str) -> Logs {
        Logs {
            bucket: "b".into(),
            prefix: prefix.into(),
            lines: 10,
            bytes: 100,
            units: vec![],
        }
    }

    #[test]
    fn placeholders_take_plain_identifiers_only() {
        let cases = [
            (
                "boot-logs/{instance_id}/{boot_id}/",
                Some("i-0123"),
                Some("5e0c-aa"),
                "boot-logs/i-0123/5e0c-aa/",
            ),
            ("{instance_id}/", None, None, "unknown/"),
            ("{instance_id}/", Some("../x"), None, "unknown/"),
            ("{instance_id}/", Some("{boot_id}"), Some("b"), "unknown/"),
            ("{instance_id}/", Some(""), None, "unknown/"),
            ("fixed/", Some("i-1"), Some("b"), "fixed/"),
        ];
        for (template, instance, boot, want) in cases {
            assert_eq!(prefix(&logs(template), instance, boot), want, "{template}");
        }
    }

    #[test]
    fn the_journal_command_names_each_unit_once() {
        assert_eq!(
            journal_command(
                Path::new("/usr/bin/journalctl"),
                None,
                &[
                    "myapp.service".into(),
                    "bootstage-s3-sync.service".into(),
                    "myapp.service".into(),
                    "web@*.service".into(),
                ],
                2000
            ),
            [
                "/usr/bin/journalctl",
                "-b",
                "-o",
                "short-monotonic",
                "--no-pager",
                "--lines",
                "2000",
                "--unit=bootstage-*",
                "--unit=myapp.service",
                "--unit=web@*.service",
            ]
        );
        assert_eq!(
            journal_command(
                Path::new("journalctl"),
                Some("8fc307e1737f4f70853e145bfa54ecd9"),
                &[],
                5
            ),
            [
                "journalctl",
                "--boot=8fc307e1737f4f70853e145bfa54ecd9",
                "-o",
                "short-monotonic",
                "--no-pager",
                "--lines",
                "5",
                "--unit=bootstage-*",
            ]
        );
    }

    #[test]
    fn a_journal_boot_id_reads_as_the_kernels() {
        assert_eq!(
            boot_id("8FC307E1737F4F70853E145BFA54ECD9").as_deref(),
            Some("8fc307e1-737f-4f70-853e-145bfa54ecd9")
        );
        for bad in [
            "",
            "8fc307e1-737f-4f70-853e-145bfa54ecd9",
            "8fc307e1737f4f70853e145bfa54ecdz",
            "8fc307e1737f4f70853e145bfa54ecd",
        ] {
            assert_eq!(boot_id(bad), None, "{bad}");
        }
    }
}
