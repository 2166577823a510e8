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
//! Scheduled events, as Microsoft documents them (`/metadata/scheduledevents`, any
//! `api-version` from 2017-08-01, `Metadata: true` as everywhere): `GET` answers
//! `{"DocumentIncarnation": N, "Events": [...]}` (each event with `EventId`,
//! `EventType`, `ResourceType`, `Resources`, `EventStatus`, `NotBefore` as RFC 1123,
//! `Description`, `EventSource`, `DurationInSeconds`); the incarnation grows at every
//! change. `POST` with `{"StartRequests": [{"EventId": …}]}` approves: 200 when every id
//! is a listed event (each approval recorded), 400 for a body that is not that or an id
//! not listed; an approved event leaves the list at once, as Azure removes it once it is
//! over (unless `azure.keep_approved_events`: it stays `Scheduled`, as on a shared host
//! waiting for the other tenants' approvals). The first `GET` is answered after
//! `azure.scheduled_events_first_delay_secs` (Azure enables the service at the first call,
//! which may take two minutes). A test adds and removes events while running
//! (`Emulator::add_scheduled_event`, `remove_scheduled_event`, or `PUT
//! /_emulator/azure/scheduledevents` with an event's JSON and `DELETE
//! /_emulator/azure/scheduledevents/ID`), reads the approvals
//! (`Emulator::scheduled_event_approvals`, `GET /_emulator/azure/approvals`) and waits for
//! the watcher's polls (`Emulator::scheduled_events_served`).
//!
//! The wireserver (168.63.129.16 on Azure) on the same port: `GET /machine/?comp=goalstate`
//! answers the goal state (`incarnation`, `container_id`, `role_instance_id`) and
//! `POST /machine/?comp=health` answers 200; both want `x-ms-version: 2012-11-30` (400
//! without it), as WALinuxAgent sends it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{Config, Emulator, Reply, Shared, lock};

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
    /// Approved scheduled events stay listed as `Scheduled` (a shared host waiting for
    /// the other tenants), instead of leaving the list.
    pub keep_approved_events: bool,
    /// The first scheduled events request is answered this many seconds late (the
    /// service being enabled).
    pub scheduled_events_first_delay_secs: u64,
    /// The instance document (`/metadata/instance` itself) answers 404 to its first this
    /// many requests, as Azure's IMDS may while the VM is still being provisioned
    /// (cloud-init's Azure source retries a 404 for it).
    pub instance_missing_first: u64,
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
            keep_approved_events: false,
            scheduled_events_first_delay_secs: 0,
            instance_missing_first: 0,
        }
    }
}

const PREFIX: &str = "/metadata/instance";
const SCHEDULED_EVENTS: &str = "/metadata/scheduledevents";
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
        self: &Arc<Self>,
        config: &Config,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        body: &[u8],
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
        if path == SCHEDULED_EVENTS {
            return self.scheduled_events(config, method, query, body);
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
        if rest.is_empty()
            && self.azure.documents.fetch_add(1, Ordering::SeqCst) < vm.instance_missing_first
        {
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

/// One scheduled event, as Azure serves it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ScheduledEvent {
    pub event_id: String,
    /// `Reboot`, `Redeploy`, `Freeze`, `Preempt` or `Terminate`.
    pub event_type: String,
    pub resource_type: String,
    /// The VMs it affects, by name (`compute.name`).
    pub resources: Vec<String>,
    /// `Scheduled` or `Started`.
    pub event_status: String,
    /// RFC 1123 (`Mon, 19 Sep 2016 18:29:47 GMT`), blank once started.
    pub not_before: String,
    pub description: String,
    /// `Platform` or `User`.
    pub event_source: String,
    pub duration_in_seconds: i64,
}

impl ScheduledEvent {
    /// A `Scheduled` event of the platform for the VMs `resources`, not before `at`.
    pub fn new(id: &str, event_type: &str, resources: &[&str], at: SystemTime) -> ScheduledEvent {
        ScheduledEvent {
            event_id: id.into(),
            event_type: event_type.into(),
            resource_type: "VirtualMachine".into(),
            resources: resources.iter().map(|r| r.to_string()).collect(),
            event_status: "Scheduled".into(),
            not_before: rfc1123(at),
            description: "Host server is undergoing maintenance.".into(),
            event_source: "Platform".into(),
            duration_in_seconds: -1,
        }
    }
}

/// `at` as RFC 1123, as Azure writes `NotBefore`: `Mon, 19 Sep 2016 18:29:47 GMT`.
pub fn rfc1123(at: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil from days (Howard Hinnant's algorithm), March-based years.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The scheduled events as they stand, the approvals received, and the polls served.
pub(crate) struct Live {
    /// `DocumentIncarnation` and the events.
    doc: std::sync::Mutex<(u64, Vec<ScheduledEvent>)>,
    /// The EventIds approved, in order.
    approvals: tokio::sync::watch::Sender<Vec<String>>,
    /// GETs received, and GETs answered.
    asked: tokio::sync::watch::Sender<u64>,
    served: tokio::sync::watch::Sender<u64>,
    /// The first GET was received (answered, or being delayed).
    first: AtomicBool,
    /// Requests for the instance document itself so far.
    documents: AtomicU64,
}

impl Default for Live {
    fn default() -> Self {
        Live {
            doc: std::sync::Mutex::new((1, Vec::new())),
            approvals: tokio::sync::watch::channel(Vec::new()).0,
            asked: tokio::sync::watch::channel(0).0,
            served: tokio::sync::watch::channel(0).0,
            first: AtomicBool::new(false),
            documents: AtomicU64::new(0),
        }
    }
}

impl Live {
    fn add(&self, event: ScheduledEvent) {
        let mut doc = lock(&self.doc);
        doc.1.retain(|e| e.event_id != event.event_id);
        doc.1.push(event);
        doc.0 += 1;
    }

    fn remove(&self, id: &str) -> bool {
        let mut doc = lock(&self.doc);
        let before = doc.1.len();
        doc.1.retain(|e| e.event_id != id);
        let removed = doc.1.len() != before;
        if removed {
            doc.0 += 1;
        }
        removed
    }

    fn document(&self) -> Value {
        let doc = lock(&self.doc);
        json!({ "DocumentIncarnation": doc.0, "Events": doc.1 })
    }
}

impl Emulator {
    /// Lists `event` now (an event with the same id is replaced); the incarnation grows.
    pub fn add_scheduled_event(&self, event: ScheduledEvent) {
        self.shared.azure.add(event);
    }

    /// Takes the event `id` off the list (canceled, or over); whether it was listed.
    pub fn remove_scheduled_event(&self, id: &str) -> bool {
        self.shared.azure.remove(id)
    }

    /// The EventIds approved so far (each `StartRequests` entry that was accepted), in
    /// order.
    pub fn scheduled_event_approvals(&self) -> Vec<String> {
        self.shared.azure.approvals.borrow().clone()
    }

    /// Waits until `n` approvals in all were accepted.
    pub async fn scheduled_events_approved(&self, n: usize) {
        let mut rx = self.shared.azure.approvals.subscribe();
        let _ = rx.wait_for(|approvals| approvals.len() >= n).await;
    }

    /// How many scheduled events GETs were received so far (answered or not).
    pub fn scheduled_events_asked_count(&self) -> u64 {
        *self.shared.azure.asked.borrow()
    }

    /// Waits until `n` scheduled events GETs in all were received (answered or not).
    pub async fn scheduled_events_asked(&self, n: u64) {
        let mut rx = self.shared.azure.asked.subscribe();
        let _ = rx.wait_for(|asked| *asked >= n).await;
    }

    /// How many scheduled events GETs were answered so far.
    pub fn scheduled_events_count(&self) -> u64 {
        *self.shared.azure.served.borrow()
    }

    /// Waits until `n` scheduled events GETs in all were answered.
    pub async fn scheduled_events_served(&self, n: u64) {
        let mut rx = self.shared.azure.served.subscribe();
        let _ = rx.wait_for(|served| *served >= n).await;
    }
}

impl Shared {
    /// `/metadata/scheduledevents`: the document, or an approval.
    fn scheduled_events(
        self: &Arc<Self>,
        config: &Config,
        method: &Method,
        query: Option<&str>,
        body: &[u8],
    ) -> Reply {
        let params = params(query);
        match params.get("api-version").copied() {
            None => {
                return bad_request(
                    "Bad request. api-version was not specified in the request. For more information refer to aka.ms/azureimds",
                );
            }
            Some(v) if !valid_version(v) || v < "2017-08-01" => {
                return bad_request("Bad request. api-version is invalid");
            }
            Some(_) => {}
        }
        match method.as_str() {
            "GET" => {
                self.azure.asked.send_modify(|n| *n += 1);
                let first = !self.azure.first.swap(true, Ordering::SeqCst);
                let delay = config.azure.scheduled_events_first_delay_secs;
                if first && delay > 0 {
                    let shared = self.clone();
                    return Reply::Wait(Box::pin(async move {
                        tokio::time::sleep(Duration::from_secs(delay)).await;
                        shared.serve_events()
                    }));
                }
                self.serve_events()
            }
            "POST" => self.approve(config, body),
            _ => json_answer(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({ "error": "Method not allowed" }),
            ),
        }
    }

    fn serve_events(&self) -> Reply {
        let doc = self.azure.document();
        self.azure.served.send_modify(|n| *n += 1);
        json_answer(StatusCode::OK, &doc)
    }

    /// `{"StartRequests": [{"EventId": …}]}`: each id must be listed.
    fn approve(&self, config: &Config, body: &[u8]) -> Reply {
        let ids: Option<Vec<String>> = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v.get("StartRequests")?.as_array().cloned())
            .and_then(|list| {
                list.iter()
                    .map(|r| r.get("EventId")?.as_str().map(str::to_string))
                    .collect()
            });
        let Some(ids) = ids.filter(|ids| !ids.is_empty()) else {
            return bad_request("Bad request. The request body is not a list of StartRequests");
        };
        {
            let doc = lock(&self.azure.doc);
            if let Some(unknown) = ids
                .iter()
                .find(|id| !doc.1.iter().any(|e| e.event_id == **id))
            {
                return bad_request(&format!("Bad request. {unknown} is not a scheduled event"));
            }
        }
        self.azure
            .approvals
            .send_modify(|approvals| approvals.extend(ids.iter().cloned()));
        if !config.azure.keep_approved_events {
            for id in &ids {
                self.azure.remove(id);
            }
        }
        json_answer(StatusCode::OK, &json!({}))
    }

    /// `/_emulator/azure/…`: `PUT scheduledevents` (body: an event), `DELETE
    /// scheduledevents/ID`, `GET approvals`.
    pub(crate) fn azure_control(&self, method: &Method, what: &str, body: Bytes) -> Response {
        match (method.as_str(), what.trim_end_matches('/')) {
            ("PUT", "scheduledevents") => match serde_json::from_slice::<ScheduledEvent>(&body) {
                Ok(event) => {
                    self.azure.add(event);
                    StatusCode::NO_CONTENT.into_response()
                }
                Err(e) => (
                    StatusCode::BAD_REQUEST,
                    format!("not a scheduled event: {e}\n"),
                )
                    .into_response(),
            },
            ("DELETE", path) if path.starts_with("scheduledevents/") => {
                match self.azure.remove(&path["scheduledevents/".len()..]) {
                    true => StatusCode::NO_CONTENT.into_response(),
                    false => StatusCode::NOT_FOUND.into_response(),
                }
            }
            ("GET", "approvals") => {
                let approvals =
                    serde_json::to_vec(&*self.azure.approvals.borrow()).unwrap_or_default();
                ([("content-type", "application/json")], approvals).into_response()
            }
            _ => StatusCode::NOT_FOUND.into_response(),
        }
    }
}
