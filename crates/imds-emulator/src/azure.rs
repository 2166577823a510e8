//! Azure's Instance Metadata Service, with `flavor: azure` (see the crate's
//! documentation).
//!
//! As Microsoft documents it: every request needs `Metadata: true` and must not carry
//! `X-Forwarded-For` (400 with a JSON error otherwise); every request needs an
//! `api-version` (400 without one, or with one that is not a version date); below
//! `/metadata/instance` any node of the instance document is served, an inner node as
//! JSON, a leaf only with `format=text` (400 without it); `compute/userData` is the
//! user-data base64-encoded (from 2021-01-01; empty when there is none, or before
//! `user_data_after`). Anything else is 404; a method other than GET is 405.
//!
//! The wireserver (168.63.129.16 on Azure) on the same port: `GET /machine/?comp=goalstate`
//! answers the goal state (`incarnation`, `container_id`, `role_instance_id`) and
//! `POST /machine/?comp=health` answers 200; both want `x-ms-version: 2012-11-30` (400
//! without it), as WALinuxAgent sends it.

use std::collections::BTreeMap;

use axum::http::{HeaderMap, Method, StatusCode};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{Config, Reply, Shared};

/// The request carries `Metadata: true`.
pub(crate) fn has_metadata_header(headers: &HeaderMap) -> bool {
    headers
        .get("metadata")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"))
}

/// The Azure VM the emulator describes with `flavor: azure`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AzureInstance {
    pub vm_id: String,
    pub name: String,
    pub computer_name: String,
    pub location: String,
    /// `""` outside an availability zone, as Azure serves it.
    pub zone: String,
    pub vm_size: String,
    pub subscription_id: String,
    pub resource_group_name: String,
    pub private_ip: String,
    /// As Azure writes it: 12 hex digits, upper case, no separators.
    pub mac: String,
    pub tags: BTreeMap<String, String>,
    /// The wireserver's goal state: its incarnation, container and role instance.
    pub incarnation: u64,
    pub container_id: String,
    pub role_instance_id: String,
    /// Answer every request with an HTML page (200, `text/html`), as a captive portal
    /// or a proxy would: a server that is not Azure's.
    pub answer_html: bool,
}

impl Default for AzureInstance {
    fn default() -> Self {
        AzureInstance {
            vm_id: "02aab8a4-74ef-476e-8182-f6d2ba4166a6".into(),
            name: "web-1".into(),
            computer_name: "web-1".into(),
            location: "westeurope".into(),
            zone: "2".into(),
            vm_size: "Standard_B2s".into(),
            subscription_id: "8d10da13-8125-4ba9-a717-bf7490507b3d".into(),
            resource_group_name: "bootstage-rg".into(),
            private_ip: "10.1.0.4".into(),
            mac: "000D3A2B4C5E".into(),
            tags: BTreeMap::new(),
            incarnation: 1,
            container_id: "c6d5526c-5ac2-4200-b6e2-56f2b70c5ab2".into(),
            role_instance_id: "b61f93d0-e1ed-40b2-b067-22c243233448.MachineRole_IN_0".into(),
            answer_html: false,
        }
    }
}

const PREFIX: &str = "/metadata/instance";
/// The first version with `compute/userData`.
const USER_DATA_SINCE: &str = "2021-01-01";

fn json_answer(status: StatusCode, body: &Value) -> Reply {
    Reply::Answer(
        status,
        vec![("content-type", "application/json; charset=utf-8".into())],
        serde_json::to_vec(body).unwrap_or_default(),
    )
}

fn bad_request(why: &str) -> Reply {
    json_answer(StatusCode::BAD_REQUEST, &json!({ "error": why }))
}

/// `YYYY-MM-DD`, from the first IMDS version on.
fn valid_version(v: &str) -> bool {
    let b = v.as_bytes();
    b.len() == 10
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            _ => c.is_ascii_digit(),
        })
        && v >= "2017-04-02"
}

impl AzureInstance {
    /// The instance document as `version` shows it, with the user-data as given.
    fn document(&self, version: &str, user_data: Option<&[u8]>) -> Value {
        let tags_list: Vec<Value> = self
            .tags
            .iter()
            .map(|(name, value)| json!({ "name": name, "value": value }))
            .collect();
        let tags: Vec<String> = self.tags.iter().map(|(k, v)| format!("{k}:{v}")).collect();
        let mut compute = json!({
            "azEnvironment": "AzurePublicCloud",
            "location": self.location,
            "name": self.name,
            "osProfile": {
                "adminUsername": "azureuser",
                "computerName": self.computer_name,
                "disablePasswordAuthentication": "true",
            },
            "osType": "Linux",
            "resourceGroupName": self.resource_group_name,
            "resourceId": format!(
                "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/virtualMachines/{}",
                self.subscription_id, self.resource_group_name, self.name
            ),
            "subscriptionId": self.subscription_id,
            "tags": tags.join(";"),
            "tagsList": tags_list,
            "vmId": self.vm_id,
            "vmSize": self.vm_size,
            "zone": self.zone,
        });
        if version >= USER_DATA_SINCE {
            let encoded = user_data
                .map(|d| base64::engine::general_purpose::STANDARD.encode(d))
                .unwrap_or_default();
            compute["userData"] = Value::String(encoded);
        }
        json!({
            "compute": compute,
            "network": {
                "interface": [{
                    "ipv4": {
                        "ipAddress": [{ "privateIpAddress": self.private_ip, "publicIpAddress": "" }],
                        "subnet": [{ "address": "10.1.0.0", "prefix": "24" }],
                    },
                    "ipv6": { "ipAddress": [] },
                    "macAddress": self.mac,
                }],
            },
        })
    }
}

/// The query's parameters (no percent-decoding: IMDS's are plain).
fn params(query: Option<&str>) -> BTreeMap<&str, &str> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect()
}

impl Shared {
    /// A request to Azure's IMDS, once the scripted hangs and 503s are past.
    pub(crate) fn azure(
        &self,
        config: &Config,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Reply {
        let vm = &config.azure;
        if path == "/machine" || path == "/machine/" {
            return wireserver(vm, method, query, headers);
        }
        if vm.answer_html {
            return Reply::Answer(
                StatusCode::OK,
                vec![("content-type", "text/html".into())],
                b"<html><body>Sign in to continue</body></html>".to_vec(),
            );
        }
        if !has_metadata_header(headers) {
            return bad_request("Bad request. Required metadata header not specified");
        }
        if headers.contains_key("x-forwarded-for") {
            return bad_request("Bad request. Requests with X-Forwarded-For are not allowed");
        }
        if *method != Method::GET {
            return json_answer(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({ "error": "Method not allowed" }),
            );
        }
        let params = params(query);
        let Some(version) = params.get("api-version").copied() else {
            return bad_request(
                "Bad request. api-version was not specified in the request. For more information refer to aka.ms/azureimds",
            );
        };
        if !valid_version(version) {
            return bad_request("Bad request. api-version is invalid");
        }
        let Some(rest) = path.strip_prefix(PREFIX) else {
            return json_answer(StatusCode::NOT_FOUND, &json!({ "error": "Not found" }));
        };
        if !rest.is_empty() && !rest.starts_with('/') {
            return json_answer(StatusCode::NOT_FOUND, &json!({ "error": "Not found" }));
        }
        let user_data = self.user_data_now(config);
        let doc = vm.document(version, user_data.as_deref());
        let mut node = &doc;
        for segment in rest.split('/').filter(|s| !s.is_empty()) {
            let next = match node {
                Value::Object(map) => map.get(segment),
                Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
                _ => None,
            };
            match next {
                Some(next) => node = next,
                None => {
                    return json_answer(StatusCode::NOT_FOUND, &json!({ "error": "Not found" }));
                }
            }
        }
        let text = params.get("format") == Some(&"text");
        match node {
            Value::Object(_) | Value::Array(_) => json_answer(StatusCode::OK, node),
            leaf if text => Reply::Answer(
                StatusCode::OK,
                vec![("content-type", "text/plain; charset=utf-8".into())],
                match leaf {
                    Value::String(s) => s.clone().into_bytes(),
                    other => other.to_string().into_bytes(),
                },
            ),
            _ => bad_request("Bad request. A leaf node is only served with format=text"),
        }
    }
}

/// Azure's wireserver: the goal state and the health report.
fn wireserver(
    vm: &AzureInstance,
    method: &Method,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Reply {
    let xml = |status: StatusCode, body: String| {
        Reply::Answer(
            status,
            vec![("content-type", "text/xml; charset=utf-8".into())],
            body.into_bytes(),
        )
    };
    let versioned = headers
        .get("x-ms-version")
        .is_some_and(|v| v.as_bytes() == b"2012-11-30");
    if !versioned {
        return xml(
            StatusCode::BAD_REQUEST,
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>MissingVersion</Code><Message>x-ms-version 2012-11-30 is required</Message></Error>".into(),
        );
    }
    match (method.as_str(), params(query).get("comp").copied()) {
        ("GET", Some("goalstate")) => xml(
            StatusCode::OK,
            format!(
                r#"<?xml version="1.0" encoding="utf-8"?>
<GoalState xmlns:i="http://www.w3.org/2001/XMLSchema-instance" xsi:noNamespaceSchemaLocation="goalstate10.xsd">
  <Version>2012-11-30</Version>
  <Incarnation>{}</Incarnation>
  <Machine>
    <ExpectedState>Started</ExpectedState>
    <StopRolesDeadlineHint>300000</StopRolesDeadlineHint>
    <ExpectHealthReport>FALSE</ExpectHealthReport>
  </Machine>
  <Container>
    <ContainerId>{}</ContainerId>
    <RoleInstanceList>
      <RoleInstance>
        <InstanceId>{}</InstanceId>
        <State>Started</State>
      </RoleInstance>
    </RoleInstanceList>
  </Container>
</GoalState>
"#,
                vm.incarnation, vm.container_id, vm.role_instance_id
            ),
        ),
        ("POST", Some("health")) => Reply::Answer(StatusCode::OK, Vec::new(), Vec::new()),
        ("GET" | "POST", _) => xml(StatusCode::NOT_FOUND, String::new()),
        _ => xml(StatusCode::METHOD_NOT_ALLOWED, String::new()),
    }
}
