//! Compute Engine's metadata server, with `flavor: gcp` (see the crate's documentation).

use std::collections::BTreeMap;

use axum::http::{HeaderMap, Method, StatusCode};
use serde::{Deserialize, Serialize};

use crate::{Config, Reply, Shared, answer};

pub(crate) const FLAVOR_HEADER: &str = "metadata-flavor";
const PREFIX: &str = "/computeMetadata/v1/";

/// The request carries `Metadata-Flavor: Google`.
pub(crate) fn flavored(headers: &HeaderMap) -> bool {
    headers
        .get(FLAVOR_HEADER)
        .is_some_and(|v| v.as_bytes() == b"Google")
}

/// The Compute Engine instance the emulator describes with `flavor: gcp`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct GcpInstance {
    pub id: String,
    pub zone: String,
    pub machine_type: String,
    pub project_id: String,
    pub numeric_project_id: String,
    pub hostname: String,
    pub ip: String,
    pub mac: String,
    /// The attribute the user-data is served as: `bootstage` or `user-data`.
    pub user_data_attribute: String,
    /// Other instance attributes, served as they are.
    pub attributes: BTreeMap<String, String>,
}

impl Default for GcpInstance {
    fn default() -> Self {
        GcpInstance {
            id: "4520031799277581759".into(),
            zone: "europe-west4-b".into(),
            machine_type: "e2-medium".into(),
            project_id: "bootstage-test".into(),
            numeric_project_id: "123456789012".into(),
            hostname: "web-1.europe-west4-b.c.bootstage-test.internal".into(),
            ip: "10.164.0.2".into(),
            mac: "42:01:0a:a4:00:02".into(),
            user_data_attribute: "bootstage".into(),
            attributes: BTreeMap::new(),
        }
    }
}

impl Shared {
    /// A request to Compute Engine's metadata server, once the scripted hangs and 503s
    /// are past: every answer carries `Metadata-Flavor: Google` unless
    /// `omit_flavor_header`.
    pub(crate) fn gcp(
        &self,
        config: &Config,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Reply {
        match self.serve_gcp(config, method, path, headers) {
            Reply::Answer(status, mut extra, body) => {
                if !config.omit_flavor_header {
                    extra.push((FLAVOR_HEADER, "Google".into()));
                }
                extra.push(("content-type", "application/text".into()));
                Reply::Answer(status, extra, body)
            }
            Reply::Hang => Reply::Hang,
        }
    }

    /// Compute Engine's metadata server (flavor `gcp`).
    fn serve_gcp(
        &self,
        config: &Config,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Reply {
        let flavored = headers
            .get(FLAVOR_HEADER)
            .is_some_and(|v| v.as_bytes() == b"Google");
        if !flavored || headers.contains_key("x-forwarded-for") {
            return answer(
                StatusCode::FORBIDDEN,
                "Your client does not have permission to get URL from this server. Missing Metadata-Flavor:Google header.\n",
            );
        }
        if *method != Method::GET {
            return answer(StatusCode::METHOD_NOT_ALLOWED, "");
        }
        let g = &config.gcp;
        let text = |s: &str| answer(StatusCode::OK, s);
        let Some(item) = path.strip_prefix(PREFIX) else {
            return answer(StatusCode::NOT_FOUND, "");
        };
        let user_data = self.user_data_now(config);
        if let Some(name) = item.strip_prefix("instance/attributes/") {
            let mut attributes: BTreeMap<&str, Vec<u8>> = g
                .attributes
                .iter()
                .map(|(k, v)| (k.as_str(), v.clone().into_bytes()))
                .collect();
            if let Some(data) = user_data {
                attributes.insert(g.user_data_attribute.as_str(), data);
            }
            return match name {
                "" => text(&attributes.keys().copied().collect::<Vec<_>>().join("\n")),
                name => match attributes.remove(name) {
                    Some(value) => answer(StatusCode::OK, value),
                    None => answer(StatusCode::NOT_FOUND, ""),
                },
            };
        }
        match item {
            "instance/id" => text(&g.id),
            "instance/zone" => text(&format!(
                "projects/{}/zones/{}",
                g.numeric_project_id, g.zone
            )),
            "instance/machine-type" => text(&format!(
                "projects/{}/machineTypes/{}",
                g.numeric_project_id, g.machine_type
            )),
            "instance/hostname" => text(&g.hostname),
            "instance/network-interfaces/0/ip" => text(&g.ip),
            "instance/network-interfaces/0/mac" => text(&g.mac),
            "project/project-id" => text(&g.project_id),
            "project/numeric-project-id" => text(&g.numeric_project_id),
            _ => answer(StatusCode::NOT_FOUND, ""),
        }
    }
}
