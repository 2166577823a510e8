//! OpenStack's metadata, as Nova serves it: user-data and facts, from the metadata
//! service or from a config drive.
//!
//! - Config drive: when `BOOTSTAGE_CONFIG_DRIVE` names a directory (where the filesystem
//!   labelled `config-2` is mounted; bootstage mounts nothing itself), everything is read
//!   from `openstack/latest/` below it and the network is not used. The directory is
//!   opened from `/` with the rules of `sync::fsat::open_dir_path`, and every name below
//!   it with `O_NOFOLLOW`, regular files only. No `user_data` file is no user-data (a
//!   drive does not change after boot, so there is nothing to wait for).
//! - Metadata service: `--imds-endpoint` (`http://HOST[:PORT]`), else
//!   `BOOTSTAGE_OPENSTACK_METADATA` (the same form), else `http://169.254.169.254`;
//!   `GET /openstack/latest/user_data` (404: none, "not there yet" within the grace
//!   period, then "no user-data", as on EC2) and `GET /openstack/latest/meta_data.json`,
//!   which must come as `application/json` (as Nova has sent it since 2015, and Neutron's
//!   metadata proxy passes on) and be a JSON object: anything else (a captive portal's
//!   page) is not Nova's and is refused. Nova asks for no header. Every request is bounded by `--request-timeout` and the stage
//!   deadline, retried with `base::retry`'s policies; no proxy, no redirects.
//! - The facts, under EC2's names where they mean the same thing: `uuid` → instance-id,
//!   `availability_zone` → availability-zone, `hostname` → local-hostname, `project_id`
//!   → project-id (as GCP's), `name` → instance-name (as Azure's), `meta` (the server's
//!   metadata key/value pairs) → tags.
//!   Nova's metadata names no region, instance type or address.
//!
//! How each answer is handled lives in one place: [`verdict`].

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::StatusCode;
use serde::Deserialize;

use super::ImdsError;
use super::facts::Facts;
use super::http::{self, Answer};
use crate::base::retry::{self, Deadline};
use crate::sync::fsat;

pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
/// The variable that points bootstage at another metadata service address.
pub const ENDPOINT_ENV: &str = "BOOTSTAGE_OPENSTACK_METADATA";
/// The variable that names a mounted config drive's root.
pub const CONFIG_DRIVE_ENV: &str = "BOOTSTAGE_CONFIG_DRIVE";
/// Below the service's root and the drive's.
pub const LATEST: &str = "openstack/latest";
pub const META_DATA: &str = "meta_data.json";
pub const USER_DATA: &str = "user_data";
/// Nova's user-data is at most 64 KiB (base64 in the API); the metadata a few KiB.
const MAX_USER_DATA: usize = 64 * 1024;
const MAX_META_DATA: usize = 1024 * 1024;

/// Where the metadata is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The metadata service at this base URL.
    Service(String),
    /// A config drive mounted at this absolute path.
    Drive(PathBuf),
}

/// Picks the source: a config drive when [`CONFIG_DRIVE_ENV`] names one, else the
/// service at the flag, [`ENDPOINT_ENV`] or Nova's address.
pub fn resolve_source(
    flag: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Source, String> {
    if let Some(drive) = env(CONFIG_DRIVE_ENV).filter(|v| !v.is_empty()) {
        if flag.is_some() {
            return Err(format!(
                "--imds-endpoint and {CONFIG_DRIVE_ENV}= name two sources of OpenStack metadata; give one"
            ));
        }
        let path = PathBuf::from(&drive);
        if !path.is_absolute() {
            return Err(format!(
                "{CONFIG_DRIVE_ENV}={drive:?}: expected the absolute path where the config drive is mounted"
            ));
        }
        return Ok(Source::Drive(path));
    }
    let (chosen, origin) = match (flag, env(ENDPOINT_ENV).filter(|v| !v.is_empty())) {
        (Some(flag), _) => (flag.to_string(), "--imds-endpoint ".to_string()),
        (None, Some(url)) => (url, format!("{ENDPOINT_ENV}=")),
        (None, None) => (
            DEFAULT_ENDPOINT.to_string(),
            "OpenStack metadata endpoint ".into(),
        ),
    };
    super::check_endpoint(&chosen).map_err(|why| format!("{origin}{chosen:?}{why}"))?;
    Ok(Source::Service(chosen.trim_end_matches('/').to_string()))
}

/// What an answer means.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Body,
    Absent,
    Retry,
    Unexpected,
}

fn verdict(status: StatusCode) -> Verdict {
    match status.as_u16() {
        200 => Verdict::Body,
        404 => Verdict::Absent,
        429 | 500..=599 => Verdict::Retry,
        _ => Verdict::Unexpected,
    }
}

pub struct Options {
    pub source: Source,
    pub request_timeout: Duration,
    pub deadline: Deadline,
}

pub struct Client {
    http: reqwest::Client,
    source: Source,
    request_timeout: Duration,
    deadline: Deadline,
}

/// The parts of `meta_data.json` the facts come from.
#[derive(Default, Deserialize)]
#[serde(default)]
struct MetaData {
    uuid: Option<String>,
    name: Option<String>,
    hostname: Option<String>,
    availability_zone: Option<String>,
    project_id: Option<String>,
    meta: Option<BTreeMap<String, serde_json::Value>>,
}

impl Client {
    pub fn new(opts: Options) -> Result<Client, ImdsError> {
        Ok(Client {
            http: http::client(opts.request_timeout)?,
            source: opts.source,
            request_timeout: opts.request_timeout,
            deadline: opts.deadline,
        })
    }

    /// Where it reads, for the log: a URL or the drive's path.
    pub fn describe(&self) -> String {
        match &self.source {
            Source::Service(url) => url.clone(),
            Source::Drive(path) => format!("config drive {}", path.display()),
        }
    }

    /// `user_data`. From the service: polled while it answers 404 and `grace` has not
    /// passed since the stage started, `Ok(None)` after that. From a drive: read once.
    pub async fn user_data(
        &self,
        grace: Duration,
        on_wait: impl FnMut(u32, Duration),
    ) -> Result<Option<Vec<u8>>, ImdsError> {
        let endpoint = match &self.source {
            Source::Drive(root) => {
                let root = root.clone();
                return tokio::task::spawn_blocking(move || {
                    read_drive(&root, USER_DATA, MAX_USER_DATA)
                })
                .await
                .map_err(|e| ImdsError::Invalid {
                    what: "reading the config drive".into(),
                    why: e.to_string(),
                })?;
            }
            Source::Service(endpoint) => endpoint,
        };
        super::poll_user_data(retry::POLL, self.deadline, grace, on_wait, || async {
            match self.get(endpoint, USER_DATA, MAX_USER_DATA).await {
                Ok(answer) => Ok(Some(answer.body)),
                Err(ImdsError::NotFound(_)) => Ok(None),
                Err(e) => Err(e),
            }
        })
        .await
        .map_err(|e| http::gave_up(endpoint, self.deadline, e))
    }

    /// The facts, from `meta_data.json`; `uuid` is required.
    pub async fn facts(&self) -> Result<Facts, ImdsError> {
        let what = format!("{LATEST}/{META_DATA}");
        let body = match &self.source {
            Source::Drive(root) => {
                let root = root.clone();
                tokio::task::spawn_blocking(move || read_drive(&root, META_DATA, MAX_META_DATA))
                    .await
                    .map_err(|e| ImdsError::Invalid {
                        what: "reading the config drive".into(),
                        why: e.to_string(),
                    })??
                    .ok_or_else(|| ImdsError::NotFound(format!("config drive: {what}")))?
            }
            Source::Service(endpoint) => {
                let answer = retry::until_deadline(
                    retry::BACKOFF,
                    self.deadline,
                    |_, _, _| {},
                    || self.get(endpoint, META_DATA, MAX_META_DATA),
                )
                .await
                .map_err(|e| http::gave_up(endpoint, self.deadline, e))?;
                let media = answer.media_type();
                if media != "application/json" {
                    return Err(ImdsError::Invalid {
                        what: format!("GET /{what}"),
                        why: format!(
                            "the answer is {media:?}, not JSON, so {endpoint} is not OpenStack's metadata service; refusing it"
                        ),
                    });
                }
                answer.body
            }
        };
        facts_of(&what, &body)
    }

    /// One GET of `name` below `/openstack/latest/`.
    async fn get(&self, endpoint: &str, name: &str, max: usize) -> Result<Answer, ImdsError> {
        let what = format!("GET /{LATEST}/{name}");
        let answer = http::get(
            &self.http,
            &format!("{endpoint}/{LATEST}/{name}"),
            &what,
            &[],
            self.request_timeout,
            self.deadline,
            max,
        )
        .await?;
        match verdict(answer.status) {
            Verdict::Body => Ok(answer),
            Verdict::Absent => Err(ImdsError::NotFound(what)),
            Verdict::Retry => Err(answer.retry(what)),
            Verdict::Unexpected => Err(ImdsError::Unexpected {
                what,
                status: answer.status.as_u16(),
            }),
        }
    }
}

/// `openstack/latest/NAME` on the drive at `root`: `None` when the file does not exist.
/// Every name below `root` is opened with `O_NOFOLLOW`, and must be a regular file.
fn read_drive(root: &Path, name: &str, max: usize) -> Result<Option<Vec<u8>>, ImdsError> {
    let shown = root.join(LATEST).join(name);
    let fail = |why: String| ImdsError::Invalid {
        what: format!("config drive {}", shown.display()),
        why,
    };
    let top = fsat::open_dir_path(root, false).map_err(|e| fail(e.to_string()))?;
    let dir = fsat::open_dir_at(&top, Path::new(LATEST)).map_err(|e| fail(e.to_string()))?;
    let (file, _) = match fsat::open_file(&dir, OsStr::new(name)) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(fail(e.to_string())),
    };
    let mut body = Vec::new();
    file.take(max as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| fail(e.to_string()))?;
    if body.len() > max {
        return Err(fail(format!("over {max} bytes")));
    }
    Ok(Some(body))
}

/// The facts from `meta_data.json`'s bytes (`what` names it).
fn facts_of(what: &str, body: &[u8]) -> Result<Facts, ImdsError> {
    let doc: MetaData = serde_json::from_slice(body).map_err(|e| ImdsError::Invalid {
        what: what.into(),
        why: format!(
            "not a JSON object at line {} column {}, so not OpenStack's metadata",
            e.line(),
            e.column()
        ),
    })?;
    let present = |v: Option<String>| v.map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
    let instance_id =
        present(doc.uuid).ok_or_else(|| ImdsError::NotFound(format!("{what}: uuid")))?;
    // Nova's meta values are strings; anything else is shown as its JSON.
    let tags = doc.meta.map(|meta| {
        meta.into_iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => (k, s),
                other => (k, other.to_string()),
            })
            .collect::<BTreeMap<_, _>>()
    });
    Ok(Facts {
        source: "openstack".into(),
        instance_id: Some(instance_id),
        availability_zone: present(doc.availability_zone),
        local_hostname: present(doc.hostname),
        instance_name: present(doc.name),
        project_id: present(doc.project_id),
        tags,
        ..Facts::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers() {
        let v = |s: u16| verdict(StatusCode::from_u16(s).unwrap());
        assert_eq!(v(200), Verdict::Body);
        assert_eq!(v(404), Verdict::Absent);
        assert_eq!(v(503), Verdict::Retry);
        assert_eq!(v(429), Verdict::Retry);
        assert_eq!(v(403), Verdict::Unexpected);
        assert_eq!(v(302), Verdict::Unexpected);
    }

    #[test]
    fn source_precedence() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| vars.iter().find(|v| v.0 == k).map(|v| v.1.to_string())
        };
        let both = &[
            (CONFIG_DRIVE_ENV, "/mnt/config"),
            (ENDPOINT_ENV, "http://127.0.0.1:1"),
        ];
        assert_eq!(
            resolve_source(None, env(both)).unwrap(),
            Source::Drive("/mnt/config".into())
        );
        assert!(resolve_source(Some("http://127.0.0.1:2"), env(both)).is_err());
        assert_eq!(
            resolve_source(None, env(&both[1..])).unwrap(),
            Source::Service("http://127.0.0.1:1".into())
        );
        assert_eq!(
            resolve_source(Some("http://[::1]:3/"), env(&both[1..])).unwrap(),
            Source::Service("http://[::1]:3".into())
        );
        assert_eq!(
            resolve_source(None, env(&[])).unwrap(),
            Source::Service(DEFAULT_ENDPOINT.into())
        );
        assert_eq!(
            resolve_source(None, env(&[(CONFIG_DRIVE_ENV, "mnt")])).unwrap_err(),
            "BOOTSTAGE_CONFIG_DRIVE=\"mnt\": expected the absolute path where the config drive is mounted"
        );
    }

    #[test]
    fn facts_from_meta_data() {
        let body = br#"{"uuid": "d8e02d56-2648-49a3-bf97-6be8f1204f38", "name": "web-1",
            "hostname": "web-1.novalocal", "availability_zone": "nova",
            "project_id": "f7ac731cc11f40efbc03a9f9e1d1d21f", "launch_index": 0,
            "meta": {"role": "web", "n": 2}, "public_keys": {}}"#;
        let facts = facts_of("m", body).unwrap();
        assert_eq!(facts.source, "openstack");
        assert_eq!(
            facts.instance_id.as_deref(),
            Some("d8e02d56-2648-49a3-bf97-6be8f1204f38")
        );
        assert_eq!(facts.availability_zone.as_deref(), Some("nova"));
        assert_eq!(facts.local_hostname.as_deref(), Some("web-1.novalocal"));
        assert_eq!(facts.instance_name.as_deref(), Some("web-1"));
        assert_eq!(
            facts.tags,
            Some([("n".into(), "2".into()), ("role".into(), "web".into())].into())
        );
        assert!(matches!(
            facts_of("m", b"[1]").unwrap_err(),
            ImdsError::Invalid { .. }
        ));
        assert!(matches!(
            facts_of("m", b"{}").unwrap_err(),
            ImdsError::NotFound(_)
        ));
    }

    #[test]
    fn a_drive_is_read_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        let latest = dir.path().join(LATEST);
        std::fs::create_dir_all(&latest).unwrap();
        assert_eq!(read_drive(dir.path(), USER_DATA, 10).unwrap(), None);
        std::fs::write(latest.join(USER_DATA), "{}").unwrap();
        assert_eq!(
            read_drive(dir.path(), USER_DATA, 10).unwrap().as_deref(),
            Some(&b"{}"[..])
        );
        std::fs::write(dir.path().join("elsewhere"), "{\"uuid\":\"x\"}").unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), latest.join(META_DATA)).unwrap();
        assert!(matches!(
            read_drive(dir.path(), META_DATA, 100).unwrap_err(),
            ImdsError::Invalid { .. }
        ));
        assert!(read_drive(dir.path(), USER_DATA, 1).is_err());
    }
}
