//! OpenStack Nova's metadata service, with `flavor: openstack` (see the crate's
//! documentation).
//!
//! As Nova serves it: `GET /openstack` lists the versions, `/openstack/latest` (and each
//! dated version) lists `meta_data.json`, `network_data.json`, `user_data` (while there
//! is some) and `vendor_data.json`; `meta_data.json` is the server's JSON document
//! (`application/json`), `user_data` the user-data's bytes (404 when there is none, or
//! before `user_data_after`). Nova asks for no header. Anything else is 404; a method
//! other than GET is 405.
//!
//! `OpenStackInstance::write_config_drive` lays the same files out as a config drive's
//! `openstack/latest/`, for tests of `BOOTSTAGE_CONFIG_DRIVE`.

use std::collections::BTreeMap;
use std::path::Path;

use axum::http::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{Config, Reply, Shared, answer};

/// The Nova server the emulator describes with `flavor: openstack`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpenStackInstance {
    pub uuid: String,
    pub name: String,
    pub hostname: String,
    pub availability_zone: String,
    pub project_id: String,
    /// The server's metadata (key/value pairs), `meta` in `meta_data.json`.
    pub meta: BTreeMap<String, String>,
    /// Answer every request with an HTML page (200, `text/html`): a server that is not
    /// Nova's.
    pub answer_html: bool,
}

impl Default for OpenStackInstance {
    fn default() -> Self {
        OpenStackInstance {
            uuid: "d8e02d56-2648-49a3-bf97-6be8f1204f38".into(),
            name: "web-1".into(),
            hostname: "web-1.novalocal".into(),
            availability_zone: "nova".into(),
            project_id: "f7ac731cc11f40efbc03a9f9e1d1d21f".into(),
            meta: BTreeMap::new(),
            answer_html: false,
        }
    }
}

/// Nova's dated versions, then `latest`.
const VERSIONS: [&str; 4] = ["2012-08-10", "2013-04-04", "2016-06-30", "latest"];

impl OpenStackInstance {
    /// `meta_data.json`.
    pub fn meta_data(&self) -> Value {
        json!({
            "uuid": self.uuid,
            "name": self.name,
            "hostname": self.hostname,
            "availability_zone": self.availability_zone,
            "project_id": self.project_id,
            "launch_index": 0,
            "meta": self.meta,
            "public_keys": {},
            "keys": [],
            "devices": [],
        })
    }

    /// Writes `openstack/latest/meta_data.json` (and `user_data` when given) below `root`,
    /// as a config drive holds them.
    pub fn write_config_drive(&self, root: &Path, user_data: Option<&[u8]>) -> std::io::Result<()> {
        let latest = root.join("openstack/latest");
        std::fs::create_dir_all(&latest)?;
        std::fs::write(
            latest.join("meta_data.json"),
            serde_json::to_vec(&self.meta_data()).unwrap_or_default(),
        )?;
        if let Some(data) = user_data {
            std::fs::write(latest.join("user_data"), data)?;
        }
        Ok(())
    }
}

impl Shared {
    /// A request to Nova's metadata service, once the scripted hangs and 503s are past.
    pub(crate) fn openstack(&self, config: &Config, method: &Method, path: &str) -> Reply {
        let server = &config.openstack;
        if server.answer_html {
            return Reply::Answer(
                StatusCode::OK,
                vec![("content-type", "text/html".into())],
                b"<html><body>Sign in to continue</body></html>".to_vec(),
            );
        }
        if *method != Method::GET {
            return answer(StatusCode::METHOD_NOT_ALLOWED, "");
        }
        let text = |s: String| {
            Reply::Answer(
                StatusCode::OK,
                vec![("content-type", "text/plain; charset=UTF-8".into())],
                s.into_bytes(),
            )
        };
        let not_found = || {
            Reply::Answer(
                StatusCode::NOT_FOUND,
                vec![("content-type", "text/html; charset=UTF-8".into())],
                b"<html><head><title>404 Not Found</title></head><body><h1>404 Not Found</h1>The resource could not be found.</body></html>".to_vec(),
            )
        };
        let path = path.trim_end_matches('/');
        if path == "/openstack" {
            return text(VERSIONS.join("\n"));
        }
        let Some((version, item)) = path
            .strip_prefix("/openstack/")
            .map(|rest| rest.split_once('/').unwrap_or((rest, "")))
        else {
            return not_found();
        };
        if !VERSIONS.contains(&version) {
            return not_found();
        }
        let user_data = self.user_data_now(config);
        match item {
            "" => {
                let mut items = vec!["meta_data.json", "network_data.json"];
                if user_data.is_some() {
                    items.push("user_data");
                }
                items.push("vendor_data.json");
                text(items.join("\n"))
            }
            "meta_data.json" => Reply::Answer(
                StatusCode::OK,
                vec![("content-type", "application/json".into())],
                serde_json::to_vec(&server.meta_data()).unwrap_or_default(),
            ),
            "network_data.json" => Reply::Answer(
                StatusCode::OK,
                vec![("content-type", "application/json".into())],
                br#"{"links": [], "networks": [], "services": []}"#.to_vec(),
            ),
            "vendor_data.json" => Reply::Answer(
                StatusCode::OK,
                vec![("content-type", "application/json".into())],
                b"{}".to_vec(),
            ),
            "user_data" => match user_data {
                Some(data) => Reply::Answer(
                    StatusCode::OK,
                    vec![("content-type", "application/octet-stream".into())],
                    data,
                ),
                None => not_found(),
            },
            _ => not_found(),
        }
    }
}
