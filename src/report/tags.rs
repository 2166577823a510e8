//! The instance's status tags (`bootstage.report.tags`), decided here, pure and
//! table-tested; `stage::tags` reads the boot's state, calls `CreateTags` and keeps the
//! record of what it wrote; `stage::fleet` reads them back.
//!
//! - `bootstage:status`: `booting` (the lifecycle watcher's start, after the metadata
//!   stage), `ready` (the ready notice), `failed` or `held` (the failure notice, after the
//!   hold is decided), `draining` (the watcher's drain).
//! - `bootstage:release`: each sync destination's current version, `name=version`
//!   (the destination's last path component, the version shortened to 12 characters after
//!   an optional `sha256:`), space-separated, at most [`MAX_VALUE`] characters of the
//!   characters EC2 and IMDS allow in a tag.
//! - `bootstage:ready-seconds`: whole seconds from the identity document's `pendingTime`
//!   to READY (`report::emf::time_to_ready`'s rule: none for a boot that is not the
//!   launch's own).
//!
//! A write sends only the tags whose value changed since the last write of this boot
//! ([`changes`]; the ready seconds are measured once, at the boot's first READY); `booting` never replaces a later status ([`may_say`]): a restarted
//! watcher must not turn a ready instance back to booting.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub const STATUS: &str = "bootstage:status";
pub const RELEASE: &str = "bootstage:release";
pub const READY_SECONDS: &str = "bootstage:ready-seconds";
/// EC2's longest tag value.
pub const MAX_VALUE: usize = 256;
/// A version's characters kept (after `sha256:`).
pub const SHORT: usize = 12;

/// Where an instance's life stands, as `bootstage:status` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Booting,
    Ready,
    Failed,
    Held,
    Draining,
}

impl Status {
    pub const ALL: [Status; 5] = [
        Status::Booting,
        Status::Ready,
        Status::Failed,
        Status::Held,
        Status::Draining,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Status::Booting => "booting",
            Status::Ready => "ready",
            Status::Failed => "failed",
            Status::Held => "held",
            Status::Draining => "draining",
        }
    }

    pub fn parse(value: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.name() == value)
    }
}

/// What one moment of the instance's life says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moment {
    pub status: Status,
    /// Each sync destination's name and current version, in the settings' order.
    pub releases: Vec<(String, String)>,
    /// From `pendingTime` to READY.
    pub ready: Option<Duration>,
}

/// The tags that `moment` says (a tag it has nothing for is left out, not emptied).
pub fn wanted(moment: &Moment) -> BTreeMap<String, String> {
    let mut tags = BTreeMap::new();
    tags.insert(STATUS.to_string(), moment.status.name().to_string());
    if !moment.releases.is_empty() {
        tags.insert(RELEASE.to_string(), release(&moment.releases));
    }
    if let Some(ready) = moment.ready {
        let seconds = (ready.as_millis() + 500) / 1000;
        tags.insert(READY_SECONDS.to_string(), seconds.to_string());
    }
    tags
}

/// Whether `next` may replace the status last written this boot: anything may, except
/// `booting` over a later status.
pub fn may_say(recorded: Option<&str>, next: Status) -> bool {
    next != Status::Booting || recorded.is_none_or(|r| r == Status::Booting.name())
}

/// The tags of `wanted` whose value is not what was last written, in key order. The
/// ready seconds are the first READY's of the boot: once written, a later ready notice
/// (a restarted unit) does not measure them again.
pub fn changes(
    recorded: &BTreeMap<String, String>,
    wanted: &BTreeMap<String, String>,
) -> Vec<(String, String)> {
    wanted
        .iter()
        .filter(|(k, v)| recorded.get(*k) != Some(*v))
        .filter(|(k, _)| !(k.as_str() == READY_SECONDS && recorded.contains_key(*k)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// `bootstage:release`'s value: `name=version …`, cut to [`MAX_VALUE`] at an entry's end.
pub fn release(releases: &[(String, String)]) -> String {
    let mut value = String::new();
    for (name, version) in releases {
        let entry = format!("{}={}", clean(name), short(version));
        let sep = usize::from(!value.is_empty());
        if value.len() + sep + entry.len() > MAX_VALUE {
            break;
        }
        if sep == 1 {
            value.push(' ');
        }
        value.push_str(&entry);
    }
    value
}

/// A version shortened: quotes gone, `sha256:` kept and 12 characters after it, or an
/// ETag's first 12.
pub fn short(version: &str) -> String {
    let version = version.trim_matches('"');
    let (kind, rest) = match version.strip_prefix("sha256:") {
        Some(rest) => ("sha256:", rest),
        None => ("", version),
    };
    let rest: String = rest.chars().take(SHORT).collect();
    clean(&format!("{kind}{rest}"))
}

/// Whether a tag value written by bootstage may hold `c` (EC2's and IMDS's rule for tags:
/// ASCII letters, digits, spaces and `+ - = . _ : / @`).
fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || " +-=._:/@".contains(c)
}

/// What a tag value may hold ([`allowed`]); anything else (from an S3 ETag, which is
/// untrusted) becomes `_`.
pub fn clean(value: &str) -> String {
    value
        .chars()
        .map(|c| if allowed(c) { c } else { '_' })
        .take(MAX_VALUE)
        .collect()
}

/// The one home of showing untrusted text to an operator (a terminal, a log line): every
/// character `keep` does not accept is written as its escape (`\u{1b}`), so no control,
/// format (bidi overrides, zero-width), line-separator or other invisible character
/// reaches the screen as itself.
fn escaped(text: &str, keep: impl Fn(char) -> bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match keep(c) {
            true => out.push(c),
            false => out.extend(c.escape_unicode()),
        }
    }
    out
}

/// A value anyone may have written (a tag's, an S3 key) as shown: the characters of
/// [`clean`]'s set as they are, any other escaped.
pub fn shown(value: &str) -> String {
    escaped(value, allowed)
}

/// Text on one line (a service's error message): printable ASCII as it is, any other
/// character (newlines included) escaped.
pub fn shown_line(text: &str) -> String {
    escaped(text, |c| c == ' ' || c.is_ascii_graphic())
}

/// Text on a terminal (an uploaded journal): printable ASCII, newlines and tabs as they
/// are, any other character escaped.
pub fn shown_text(text: &str) -> String {
    escaped(text, |c| {
        c == ' ' || c == '\n' || c == '\t' || c.is_ascii_graphic()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn what_each_moment_tags() {
        let rel = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let cases = [
            (
                Moment {
                    status: Status::Booting,
                    releases: vec![],
                    ready: None,
                },
                map(&[(STATUS, "booting")]),
            ),
            (
                Moment {
                    status: Status::Ready,
                    releases: rel(&[
                        ("config", "\"0123456789abcdef0123456789abcdef\""),
                        ("app", "sha256:fedcba9876543210fedcba"),
                    ]),
                    ready: Some(Duration::from_millis(41_500)),
                },
                map(&[
                    (STATUS, "ready"),
                    (RELEASE, "config=0123456789ab app=sha256:fedcba987654"),
                    (READY_SECONDS, "42"),
                ]),
            ),
            (
                Moment {
                    status: Status::Failed,
                    releases: rel(&[("conf", "\"abc-3\"")]),
                    ready: None,
                },
                map(&[(STATUS, "failed"), (RELEASE, "conf=abc-3")]),
            ),
            (
                Moment {
                    status: Status::Held,
                    releases: vec![],
                    ready: Some(Duration::from_millis(499)),
                },
                map(&[(STATUS, "held"), (READY_SECONDS, "0")]),
            ),
        ];
        for (moment, expected) in cases {
            assert_eq!(wanted(&moment), expected, "{moment:?}");
        }
    }

    #[test]
    fn only_changed_values_are_written_and_booting_never_comes_back() {
        let before = map(&[(STATUS, "booting"), (RELEASE, "c=1")]);
        let cases = [
            (
                map(&[]),
                map(&[(STATUS, "booting")]),
                vec![(STATUS, "booting")],
            ),
            (
                before.clone(),
                map(&[(STATUS, "booting"), (RELEASE, "c=1")]),
                vec![],
            ),
            (
                before.clone(),
                map(&[(STATUS, "ready"), (RELEASE, "c=1"), (READY_SECONDS, "40")]),
                vec![(READY_SECONDS, "40"), (STATUS, "ready")],
            ),
            (
                before,
                map(&[(STATUS, "booting"), (RELEASE, "c=2")]),
                vec![(RELEASE, "c=2")],
            ),
            // A second ready notice of the boot: its later time is not the boot's.
            (
                map(&[(STATUS, "ready"), (READY_SECONDS, "40")]),
                map(&[(STATUS, "ready"), (READY_SECONDS, "41")]),
                vec![],
            ),
            (
                map(&[(STATUS, "failed"), (READY_SECONDS, "40")]),
                map(&[(STATUS, "ready"), (READY_SECONDS, "90")]),
                vec![(STATUS, "ready")],
            ),
        ];
        for (recorded, wanted, expected) in cases {
            let expected: Vec<(String, String)> = expected
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            assert_eq!(changes(&recorded, &wanted), expected, "{recorded:?}");
        }
        let says = [
            (None, Status::Booting, true),
            (Some("booting"), Status::Booting, true),
            (Some("ready"), Status::Booting, false),
            (Some("failed"), Status::Booting, false),
            (Some("held"), Status::Booting, false),
            (Some("ready"), Status::Draining, true),
            (Some("held"), Status::Failed, true),
            (Some("failed"), Status::Ready, true),
            (None, Status::Failed, true),
        ];
        for (recorded, next, may) in says {
            assert_eq!(may_say(recorded, next), may, "{recorded:?} → {next:?}");
        }
    }

    #[test]
    fn untrusted_text_is_shown_escaped() {
        // (input, shown, shown_line, shown_text)
        let cases = [
            ("ready", "ready", "ready", "ready"),
            (
                "c=sha256:3f1c0a9e77b2 a/b@c+d_e.f-g",
                "c=sha256:3f1c0a9e77b2 a/b@c+d_e.f-g",
                "c=sha256:3f1c0a9e77b2 a/b@c+d_e.f-g",
                "c=sha256:3f1c0a9e77b2 a/b@c+d_e.f-g",
            ),
            (
                "c=\u{1b}[31mred",
                "c=\\u{1b}\\u{5b}31mred",
                "c=\\u{1b}[31mred",
                "c=\\u{1b}[31mred",
            ),
            ("a\nb\tc", "a\\u{a}b\\u{9}c", "a\\u{a}b\\u{9}c", "a\nb\tc"),
            (
                "\r\u{7f}\u{9b}",
                "\\u{d}\\u{7f}\\u{9b}",
                "\\u{d}\\u{7f}\\u{9b}",
                "\\u{d}\\u{7f}\\u{9b}",
            ),
            // Bidi overrides and isolates, zero-width characters, line and paragraph
            // separators: not controls (Cc), shown escaped all the same.
            (
                "\u{202e}x\u{2066}",
                "\\u{202e}x\\u{2066}",
                "\\u{202e}x\\u{2066}",
                "\\u{202e}x\\u{2066}",
            ),
            (
                "\u{200b}\u{200f}\u{feff}",
                "\\u{200b}\\u{200f}\\u{feff}",
                "\\u{200b}\\u{200f}\\u{feff}",
                "\\u{200b}\\u{200f}\\u{feff}",
            ),
            (
                "\u{2028}\u{2029}",
                "\\u{2028}\\u{2029}",
                "\\u{2028}\\u{2029}",
                "\\u{2028}\\u{2029}",
            ),
            ("é", "\\u{e9}", "\\u{e9}", "\\u{e9}"),
            (
                "{\"a\": [1]}",
                "\\u{7b}\\u{22}a\\u{22}: \\u{5b}1\\u{5d}\\u{7d}",
                "{\"a\": [1]}",
                "{\"a\": [1]}",
            ),
        ];
        for (input, tag, line, text) in cases {
            assert_eq!(shown(input), tag, "{input:?}");
            assert_eq!(shown_line(input), line, "{input:?}");
            assert_eq!(shown_text(input), text, "{input:?}");
        }
    }

    #[test]
    fn a_release_fits_a_tag_value() {
        assert_eq!(
            short("\"d41d8cd98f00b204e9800998ecf8427e\""),
            "d41d8cd98f00"
        );
        assert_eq!(short("sha256:0123456789abcdef"), "sha256:0123456789ab");
        assert_eq!(short("\"ab<script>\""), "ab_script_");
        assert_eq!(clean("conf ig/é"), "conf ig/_");
        // Forty destinations cannot all fit: whole entries only, within 256.
        let many: Vec<(String, String)> = (0..40)
            .map(|i| (format!("dest{i:02}"), format!("\"{i:032x}\"")))
            .collect();
        let value = release(&many);
        assert!(value.len() <= MAX_VALUE, "{}", value.len());
        assert_eq!(value.len(), 239);
        assert!(value.ends_with("dest11=000000000000"), "{value}");
        for status in Status::ALL {
            assert_eq!(Status::parse(status.name()), Some(status));
        }
        assert_eq!(Status::parse("Ready"), None);
    }
}
