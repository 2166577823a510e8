//! Azure's wireserver: the boot-ready report ("report ready") that the Azure Linux agent
//! (WALinuxAgent) or cloud-init sends once a VM is provisioned; without it Azure waits,
//! then reports the VM's provisioning as timed out. For images with neither agent:
//! `BOOTSTAGE_AZURE_REPORT_READY=true` makes the metadata stage send it once it has
//! written the parameters.
//!
//! The exchange, as WALinuxAgent, cloud-init and afterburn send it (protocol version
//! `2012-11-30`, in `x-ms-version`, with `x-ms-agent-name` on every request):
//! 1. `GET /machine/?comp=goalstate`: the goal state, XML, whose `Incarnation`,
//!    `Container/ContainerId` and `Container/RoleInstanceList/RoleInstance/InstanceId`
//!    the report must repeat;
//! 2. `POST /machine/?comp=health` (`Content-Type: text/xml; charset=utf-8`): a `Health`
//!    document with those three values and `<State>Ready</State>` ([`ready_report`]).
//!
//! Endpoint: `BOOTSTAGE_AZURE_WIRESERVER` (`http://HOST[:PORT]`), else
//! `http://168.63.129.16` (Azure's fixed wireserver address; DHCP option 245 names the
//! same on Azure). Every request is bounded by the request timeout and the stage
//! deadline; a failure or an answer of 410 (a new goal state), 429 or 5xx starts the
//! exchange again, with backoff, until the deadline.

use std::time::Duration;

use aws_smithy_xml::decode::{Document, ScopedDecoder, try_data};
use reqwest::StatusCode;

use super::ImdsError;
use super::http;
use crate::base::retry::{self, Deadline};

pub const DEFAULT_ENDPOINT: &str = "http://168.63.129.16";
/// The variable that points the report at another wireserver address (tests).
pub const ENDPOINT_ENV: &str = "BOOTSTAGE_AZURE_WIRESERVER";
/// The variable that turns the report on (`true`, `1`, `yes`; off by default, since an
/// agent usually sends it).
pub const REPORT_READY_ENV: &str = "BOOTSTAGE_AZURE_REPORT_READY";
pub const VERSION: &str = "2012-11-30";
pub const AGENT_NAME: &str = "bootstage";
pub const GOAL_STATE_PATH: &str = "/machine/?comp=goalstate";
pub const HEALTH_PATH: &str = "/machine/?comp=health";
/// A goal state is a few KiB.
const MAX_GOAL_STATE: usize = 256 * 1024;

/// Whether the report is asked for, from [`REPORT_READY_ENV`]'s value.
pub fn wanted(value: Option<&str>) -> Result<bool, String> {
    match value.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        None | Some("" | "false" | "0" | "no") => Ok(false),
        Some("true" | "1" | "yes") => Ok(true),
        Some(_) => Err(format!(
            "{REPORT_READY_ENV}={:?}: expected true or false",
            value.unwrap_or_default()
        )),
    }
}

/// Picks the endpoint: [`ENDPOINT_ENV`], else Azure's address.
pub fn resolve_endpoint(env: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let (chosen, origin) = match env(ENDPOINT_ENV).filter(|v| !v.is_empty()) {
        Some(url) => (url, format!("{ENDPOINT_ENV}=")),
        None => (DEFAULT_ENDPOINT.to_string(), "wireserver endpoint ".into()),
    };
    super::check_endpoint(&chosen).map_err(|why| format!("{origin}{chosen:?}{why}"))?;
    Ok(chosen.trim_end_matches('/').to_string())
}

/// The three values of a goal state a report repeats.
#[derive(Debug, PartialEq, Eq)]
pub struct GoalState {
    pub incarnation: String,
    pub container_id: String,
    pub instance_id: String,
}

/// Reads a goal state document; each of the three values is required.
pub fn goal_state(xml: &str) -> Result<GoalState, String> {
    let mut doc = Document::new(xml);
    let mut root = doc.root_element().map_err(|e| e.to_string())?;
    if !root.start_el().matches("GoalState") {
        return Err("not a GoalState document".into());
    }
    let (mut incarnation, mut container_id, mut instance_id) = (None, None, None);
    let text = |el: &mut ScopedDecoder<'_, '_>| -> Result<String, String> {
        Ok(try_data(el).map_err(|e| e.to_string())?.trim().to_string())
    };
    while let Some(mut tag) = root.next_tag() {
        if tag.start_el().matches("Incarnation") {
            incarnation = Some(text(&mut tag)?);
        } else if tag.start_el().matches("Container") {
            while let Some(mut part) = tag.next_tag() {
                if part.start_el().matches("ContainerId") {
                    container_id = Some(text(&mut part)?);
                } else if part.start_el().matches("RoleInstanceList") {
                    while let Some(mut role) = part.next_tag() {
                        while let Some(mut field) = role.next_tag() {
                            if field.start_el().matches("InstanceId") && instance_id.is_none() {
                                instance_id = Some(text(&mut field)?);
                            }
                        }
                    }
                }
            }
        }
    }
    let need = |v: Option<String>, name: &str| {
        v.filter(|v| !v.is_empty())
            .ok_or_else(|| format!("the goal state has no {name}"))
    };
    Ok(GoalState {
        incarnation: need(incarnation, "Incarnation")?,
        container_id: need(container_id, "Container/ContainerId")?,
        instance_id: need(instance_id, "RoleInstance/InstanceId")?,
    })
}

/// XML's five escapes, for values that came from the wireserver.
fn escape(value: &str) -> String {
    value
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// The `Health` document that reports the role instance `Ready`.
pub fn ready_report(goal: &GoalState) -> String {
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<Health xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xsd="http://www.w3.org/2001/XMLSchema">
  <GoalStateIncarnation>{}</GoalStateIncarnation>
  <Container>
    <ContainerId>{}</ContainerId>
    <RoleInstanceList>
      <Role>
        <InstanceId>{}</InstanceId>
        <Health>
          <State>Ready</State>
        </Health>
      </Role>
    </RoleInstanceList>
  </Container>
</Health>
"#,
        escape(&goal.incarnation),
        escape(&goal.container_id),
        escape(&goal.instance_id)
    )
}

/// What an answer means.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Done,
    Retry,
    Unexpected,
}

/// 410: the goal state changed under us, ask again.
fn verdict(status: StatusCode) -> Verdict {
    match status.as_u16() {
        200..=299 => Verdict::Done,
        410 | 429 | 500..=599 => Verdict::Retry,
        _ => Verdict::Unexpected,
    }
}

/// Sends the ready report to the wireserver at `endpoint`: the goal state, then the
/// health report, the pair again on a retryable failure, until `deadline`.
pub async fn report_ready(
    endpoint: &str,
    request_timeout: Duration,
    deadline: Deadline,
) -> Result<(), ImdsError> {
    let client = http::client(request_timeout)?;
    let headers = [("x-ms-agent-name", AGENT_NAME), ("x-ms-version", VERSION)];
    let check = |what: String, answer: &http::Answer| match verdict(answer.status) {
        Verdict::Done => Ok(()),
        Verdict::Retry => Err(answer.retry(what)),
        Verdict::Unexpected => Err(ImdsError::Unexpected {
            what,
            status: answer.status.as_u16(),
        }),
    };
    retry::until_deadline(
        retry::BACKOFF,
        deadline,
        |_, _, _| {},
        || async {
            let what = format!("GET {GOAL_STATE_PATH}");
            let answer = http::get(
                &client,
                &format!("{endpoint}{GOAL_STATE_PATH}"),
                &what,
                &headers,
                request_timeout,
                deadline,
                MAX_GOAL_STATE,
            )
            .await?;
            check(what.clone(), &answer)?;
            let goal = goal_state(&String::from_utf8_lossy(&answer.body))
                .map_err(|why| ImdsError::Invalid { what, why })?;
            let what = format!("POST {HEALTH_PATH}");
            let mut with_type = headers.to_vec();
            with_type.push(("content-type", "text/xml; charset=utf-8"));
            let answer = http::post(
                &client,
                &format!("{endpoint}{HEALTH_PATH}"),
                ready_report(&goal).into_bytes(),
                &what,
                &with_type,
                request_timeout,
                deadline,
                MAX_GOAL_STATE,
            )
            .await?;
            check(what, &answer)
        },
    )
    .await
    .map_err(|e| http::gave_up(endpoint, deadline, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOAL: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<GoalState xmlns:i="http://www.w3.org/2001/XMLSchema-instance" xsi:noNamespaceSchemaLocation="goalstate10.xsd">
  <Version>2012-11-30</Version>
  <Incarnation>3</Incarnation>
  <Machine><ExpectedState>Started</ExpectedState><ExpectHealthReport>FALSE</ExpectHealthReport></Machine>
  <Container>
    <ContainerId>c6d5526c-5ac2-4200-b6e2-56f2b70c5ab2</ContainerId>
    <RoleInstanceList>
      <RoleInstance>
        <InstanceId>b61f93d0-e1ed-40b2-b067-22c243233448.MachineRole_IN_0</InstanceId>
        <State>Started</State>
        <Configuration><Certificates>http://x/certs</Certificates></Configuration>
      </RoleInstance>
    </RoleInstanceList>
  </Container>
</GoalState>"#;

    #[test]
    fn the_goal_states_values() {
        assert_eq!(
            goal_state(GOAL).unwrap(),
            GoalState {
                incarnation: "3".into(),
                container_id: "c6d5526c-5ac2-4200-b6e2-56f2b70c5ab2".into(),
                instance_id: "b61f93d0-e1ed-40b2-b067-22c243233448.MachineRole_IN_0".into(),
            }
        );
        assert_eq!(
            goal_state("<GoalState><Incarnation>1</Incarnation></GoalState>").unwrap_err(),
            "the goal state has no Container/ContainerId"
        );
        assert!(goal_state("<html>portal</html>").is_err());
    }

    #[test]
    fn the_report_repeats_them_escaped() {
        let report = ready_report(&GoalState {
            incarnation: "2".into(),
            container_id: "c<1>".into(),
            instance_id: "i&\"".into(),
        });
        assert!(report.contains("<GoalStateIncarnation>2</GoalStateIncarnation>"));
        assert!(report.contains("<ContainerId>c&lt;1&gt;</ContainerId>"));
        assert!(report.contains("<InstanceId>i&amp;&quot;</InstanceId>"));
        assert!(report.contains("<State>Ready</State>"));
    }

    #[test]
    fn answers_and_settings() {
        let v = |s: u16| verdict(StatusCode::from_u16(s).unwrap());
        assert_eq!(v(200), Verdict::Done);
        assert_eq!(v(410), Verdict::Retry);
        assert_eq!(v(503), Verdict::Retry);
        assert_eq!(v(400), Verdict::Unexpected);
        assert_eq!(wanted(None), Ok(false));
        assert_eq!(wanted(Some("TRUE")), Ok(true));
        assert_eq!(wanted(Some("0")), Ok(false));
        assert_eq!(
            wanted(Some("sure")).unwrap_err(),
            "BOOTSTAGE_AZURE_REPORT_READY=\"sure\": expected true or false"
        );
        let env = |v: &'static str| move |_: &str| Some(v.to_string());
        assert_eq!(resolve_endpoint(env("")).unwrap(), DEFAULT_ENDPOINT);
        assert_eq!(
            resolve_endpoint(env("http://127.0.0.1:7/")).unwrap(),
            "http://127.0.0.1:7"
        );
    }
}
