//! The record of a destination's kept generations (`generations.json`: each generation's
//! source, version, time and marks (failed, rolled back from, not yet verified); failed
//! versions; a rollback's pin; the `--on-change` hook and the `release_failed` notice
//! still owed) and the decisions
//! on it, pure and table-tested: which generation a rollback chooses, whether a version
//! may be swapped in, what is pruned. `super` (the tree) does the renames they decide.

use serde::{Deserialize, Serialize};

/// One source's version: an archive's ETag, or the digest of a prefix's listing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Version {
    pub source: String,
    pub version: String,
}

/// A kept generation, as `generations.json` records it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Made {
    /// Its directory's name in the home (`gen-…`).
    pub name: String,
    pub source: String,
    /// An archive's ETag, or `sha256:` and the digest of a prefix's listing.
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// When it was made (RFC 3339).
    pub time: String,
    /// Its `verify` failed: when, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
    /// Someone rolled back from it: who, and when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back: Option<String>,
    /// Swapped in for a destination with a `verify` that has not passed yet (it runs, or
    /// a SIGTERM or a crash ended it): since when. The next pass verifies it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unverified: Option<String>,
}

/// A rollback that holds: the version rolled back from is not swapped in again until the
/// source holds another one (or `rollback --clear`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Pin {
    pub from: Version,
    /// The generation rolled back to.
    pub to: String,
    pub by: String,
    pub at: String,
}

/// `generations.json`: the kept generations, oldest first; versions that failed their
/// verify (kept after their trees are pruned, at most [`FAILED_KEPT`]); the pin.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    #[serde(default)]
    pub generations: Vec<Made>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<Version>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<Pin>,
    /// The `--on-change` hook is owed for the current tree (since when): written with
    /// the swap or the rollback that changed it, in a run that has a hook, and cleared
    /// once the hook returned. A run that ended before (a SIGTERM, a crash) leaves it,
    /// and the next run with a hook runs it first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook_owed: Option<String>,
    /// A `release_failed` notice is owed for this generation (its name): written with its
    /// `failed` mark, cleared once the notice was delivered (or failed to be).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notice_owed: Option<String>,
}

/// Generations kept by default: the current one and the previous one.
pub const DEFAULT_KEEP: usize = 2;

pub(super) const RECORD: &str = "generations.json";
/// Failed versions remembered.
pub(super) const FAILED_KEPT: usize = 32;

/// What a kept generation is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    Current,
    Previous,
    Failed,
    RolledBack,
}

impl State {
    pub fn of(made: &Made, current: Option<&str>) -> State {
        if current == Some(made.name.as_str()) {
            State::Current
        } else if made.failed.is_some() {
            State::Failed
        } else if made.rolled_back.is_some() {
            State::RolledBack
        } else {
            State::Previous
        }
    }
}

/// Why a version the source holds is not swapped in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocked {
    /// Someone rolled back from it.
    Pinned(Pin),
    /// Its verify failed.
    Failed,
}

/// Whether `version` of `source` may be swapped in: not the version a rollback holds
/// the destination away from, nor one whose verify failed.
pub fn blocked(record: &Record, source: &str, version: &str) -> Option<Blocked> {
    let this = Version {
        source: source.into(),
        version: version.into(),
    };
    match &record.pin {
        Some(pin) if pin.from == this => Some(Blocked::Pinned(pin.clone())),
        _ if record.failed.contains(&this) => Some(Blocked::Failed),
        _ => None,
    }
}

/// The version of `source` to ask S3 about (`If-None-Match`) instead of the current
/// one: the pinned or failed one, so an unchanged source costs a 304, not a download.
pub fn blocked_version<'a>(record: &'a Record, source: &str) -> Option<&'a str> {
    let pinned = record.pin.as_ref().map(|p| &p.from);
    pinned
        .into_iter()
        .chain(record.failed.iter().rev())
        .find(|v| v.source == source)
        .map(|v| v.version.as_str())
}

/// The generation a rollback swaps in: `to` (a kept generation's name, not the current
/// one, not failed), or the newest kept one that is neither failed nor rolled back from,
/// preferring one that is not `unverified` (whose verify a run left unfinished).
pub fn rollback_target<'a>(
    record: &'a Record,
    current: Option<&str>,
    to: Option<&str>,
) -> Result<&'a Made, String> {
    match to {
        Some(name) => {
            let made = record
                .generations
                .iter()
                .find(|m| m.name == name)
                .ok_or_else(|| format!("no kept generation is named {name:?}"))?;
            match State::of(made, current) {
                State::Current => Err(format!("{name} is the current generation already")),
                State::Failed => Err(format!(
                    "{name} failed its verify; bootstage does not swap it in again"
                )),
                State::Previous | State::RolledBack => Ok(made),
            }
        }
        // The newest one that passed its verify (or never needed one), else the newest.
        None => {
            let previous = || {
                record
                    .generations
                    .iter()
                    .rev()
                    .filter(|m| State::of(m, current) == State::Previous)
            };
            let verified = previous().find(|m| m.unverified.is_none());
            verified.or_else(|| previous().next())
        }
        .ok_or_else(|| {
            "no previous generation is kept (none, or each failed or was rolled back from)"
                .to_string()
        }),
    }
}

/// The generations to remove so that at most `keep` stay: failed ones first, then those
/// rolled back from, then the oldest good ones (what a rollback would want); never the
/// current one.
pub fn prune(record: &Record, current: Option<&str>, keep: usize) -> Vec<String> {
    let excess = record.generations.len().saturating_sub(keep.max(1));
    let of = |state: State| {
        record
            .generations
            .iter()
            .filter(move |m| State::of(m, current) == state)
    };
    of(State::Failed)
        .chain(of(State::RolledBack))
        .chain(of(State::Previous))
        .take(excess)
        .map(|m| m.name.clone())
        .collect()
}

/// The version of a prefix's listing: a digest of each relative path, object version
/// and size, in path order.
pub fn listing_version<'a>(entries: impl IntoIterator<Item = (&'a str, &'a str, u64)>) -> String {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    for (path, version, size) in entries {
        for part in [path.as_bytes(), b"\0", version.as_bytes(), b"\0"] {
            hash.update(part);
        }
        hash.update(size.to_le_bytes());
    }
    format!("sha256:{}", hex::encode(hash.finalize()))
}

/// Who is running this: `SUDO_USER` (a person behind sudo), else `USER`, with the uid.
pub fn who() -> String {
    let uid = nix::unistd::getuid().as_raw();
    let name = ["SUDO_USER", "USER"]
        .iter()
        .filter_map(|k| std::env::var(k).ok())
        .find(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b))
        });
    match name {
        Some(name) => format!("{name} (uid {uid})"),
        None => format!("uid {uid}"),
    }
}

pub(super) fn now() -> String {
    crate::state::status::timestamp(std::time::SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn made(name: &str, version: &str, failed: bool, rolled_back: bool) -> Made {
        Made {
            name: name.into(),
            source: "s3://b/app.tar.zst".into(),
            version: version.into(),
            sha256: None,
            time: "T".into(),
            failed: failed.then(|| "T: verify exited with 1".into()),
            rolled_back: rolled_back.then(|| "by ops at T".into()),
            unverified: None,
        }
    }

    fn record(gens: &[(&str, bool, bool)]) -> Record {
        Record {
            generations: gens
                .iter()
                .map(|(n, f, r)| made(n, &format!("v-{n}"), *f, *r))
                .collect(),
            ..Record::default()
        }
    }

    /// Which generation a rollback swaps in: the newest good one before, or the one
    /// named; never the current one, never a failed one.
    #[test]
    fn which_generation_a_rollback_chooses() {
        let ok = |r: Result<&Made, String>| r.map(|m| m.name.clone());
        let three = record(&[
            ("g1", false, false),
            ("g2", false, false),
            ("g3", false, false),
        ]);
        type Case<'a> = (
            Record,
            Option<&'a str>,
            Option<&'a str>,
            Result<String, &'a str>,
        );
        let cases: Vec<Case> = vec![
            (three.clone(), Some("g3"), None, Ok("g2".into())),
            (three.clone(), Some("g2"), None, Ok("g3".into())),
            (three.clone(), Some("g3"), Some("g1"), Ok("g1".into())),
            (
                three.clone(),
                Some("g3"),
                Some("g3"),
                Err("is the current generation already"),
            ),
            (
                three.clone(),
                Some("g3"),
                Some("g9"),
                Err("no kept generation is named \"g9\""),
            ),
            (
                record(&[
                    ("g1", false, false),
                    ("g2", true, false),
                    ("g3", false, false),
                ]),
                Some("g3"),
                None,
                Ok("g1".into()),
            ),
            (
                record(&[
                    ("g1", false, false),
                    ("g2", true, false),
                    ("g3", false, false),
                ]),
                Some("g3"),
                Some("g2"),
                Err("failed its verify"),
            ),
            (
                record(&[
                    ("g1", false, false),
                    ("g2", false, true),
                    ("g3", false, false),
                ]),
                Some("g3"),
                None,
                Ok("g1".into()),
            ),
            (
                record(&[
                    ("g1", false, false),
                    ("g2", false, true),
                    ("g3", false, false),
                ]),
                Some("g3"),
                Some("g2"),
                Ok("g2".into()),
            ),
            (
                record(&[("g1", false, false)]),
                Some("g1"),
                None,
                Err("no previous generation is kept"),
            ),
            (
                record(&[]),
                None,
                None,
                Err("no previous generation is kept"),
            ),
        ];
        for (rec, current, to, expected) in cases {
            let got = ok(rollback_target(&rec, current, to));
            match (&got, &expected) {
                (Ok(g), Ok(e)) => assert_eq!(g, e, "{current:?} {to:?}"),
                (Err(g), Err(e)) => assert!(g.contains(e), "{current:?} {to:?}: {g}"),
                _ => panic!("{current:?} {to:?}: got {got:?}, expected {expected:?}"),
            }
        }
    }

    /// A rollback prefers a generation whose verify passed to a newer one left
    /// unverified, and takes an unverified one only when nothing else is kept.
    #[test]
    fn a_rollback_prefers_a_verified_generation() {
        let unverified = |mut m: Made| {
            m.unverified = Some("T".into());
            m
        };
        let rec = |gens: Vec<Made>| Record {
            generations: gens,
            ..Record::default()
        };
        let g = |n: &str| made(n, &format!("v-{n}"), false, false);
        let cases = [
            (rec(vec![g("g1"), unverified(g("g2")), g("g3")]), "g1"),
            (rec(vec![g("g1"), g("g2"), g("g3")]), "g2"),
            (rec(vec![unverified(g("g1")), g("g2"), g("g3")]), "g2"),
            (
                rec(vec![unverified(g("g1")), unverified(g("g2")), g("g3")]),
                "g2",
            ),
        ];
        for (record, expected) in cases {
            let got = rollback_target(&record, Some("g3"), None).map(|m| m.name.clone());
            assert_eq!(got.as_deref(), Ok(expected), "{record:?}");
        }
    }

    /// What a pass may swap in: not the version rolled back from while the pin holds,
    /// not a version that failed its verify; and what S3 is asked about instead.
    #[test]
    fn whether_a_version_may_be_swapped_in() {
        let v = |source: &str, version: &str| Version {
            source: source.into(),
            version: version.into(),
        };
        let pin = Pin {
            from: v("s3://b/2.tar.zst", "e2"),
            to: "g1".into(),
            by: "ops".into(),
            at: "T".into(),
        };
        let rec = Record {
            generations: Vec::new(),
            failed: vec![
                v("s3://b/3.tar.zst", "e3"),
                v("s3://b/app.tar.zst", "old"),
                v("s3://b/app.tar.zst", "e4"),
            ],
            pin: Some(pin.clone()),
            ..Record::default()
        };
        let cases = [
            ("s3://b/2.tar.zst", "e2", Some(Blocked::Pinned(pin.clone()))),
            ("s3://b/2.tar.zst", "e2b", None),
            ("s3://b/1.tar.zst", "e1", None),
            ("s3://b/3.tar.zst", "e3", Some(Blocked::Failed)),
            ("s3://b/3.tar.zst", "e3b", None),
            ("s3://b/app.tar.zst", "e4", Some(Blocked::Failed)),
            ("s3://b/app.tar.zst", "old", Some(Blocked::Failed)),
        ];
        for (source, version, expected) in cases {
            assert_eq!(
                blocked(&rec, source, version),
                expected,
                "{source} {version}"
            );
        }
        assert_eq!(blocked(&Record::default(), "s3://b/2.tar.zst", "e2"), None);
        // The pin first, then the newest failure of that source.
        assert_eq!(blocked_version(&rec, "s3://b/2.tar.zst"), Some("e2"));
        assert_eq!(blocked_version(&rec, "s3://b/app.tar.zst"), Some("e4"));
        assert_eq!(blocked_version(&rec, "s3://b/1.tar.zst"), None);
    }

    /// What goes past `keep`: failed ones first, then those rolled back from, then the
    /// oldest; never the current one.
    #[test]
    fn what_is_pruned() {
        let cases: Vec<(Record, &str, usize, Vec<&str>)> = vec![
            (
                record(&[("g1", false, false), ("g2", false, false)]),
                "g2",
                2,
                vec![],
            ),
            (
                record(&[
                    ("g1", false, false),
                    ("g2", false, false),
                    ("g3", false, false),
                ]),
                "g3",
                2,
                vec!["g1"],
            ),
            (
                record(&[
                    ("g1", false, false),
                    ("g2", false, false),
                    ("g3", false, false),
                ]),
                "g3",
                1,
                vec!["g1", "g2"],
            ),
            (
                record(&[
                    ("g1", false, false),
                    ("g2", true, false),
                    ("g3", false, false),
                ]),
                "g3",
                2,
                vec!["g2"],
            ),
            (
                record(&[
                    ("g1", false, false),
                    ("g2", false, true),
                    ("g3", false, false),
                ]),
                "g3",
                2,
                vec!["g2"],
            ),
            (
                record(&[
                    ("g1", false, true),
                    ("g2", true, false),
                    ("g3", false, false),
                    ("g4", false, false),
                ]),
                "g4",
                2,
                vec!["g2", "g1"],
            ),
            // After a rollback the current one is older than the others.
            (
                record(&[
                    ("g1", false, false),
                    ("g2", false, true),
                    ("g3", false, false),
                ]),
                "g1",
                1,
                vec!["g2", "g3"],
            ),
            (
                record(&[
                    ("g1", false, false),
                    ("g2", false, false),
                    ("g3", false, false),
                    ("g4", false, false),
                ]),
                "g4",
                3,
                vec!["g1"],
            ),
            (record(&[("g1", false, false)]), "g1", 0, vec![]),
        ];
        for (rec, current, keep, expected) in cases {
            assert_eq!(
                prune(&rec, Some(current), keep),
                expected,
                "{current} keep {keep}"
            );
        }
    }
}
