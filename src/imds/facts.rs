//! The instance's facts: who and where this instance is.
//!
//! On EC2 they come from IMDS: the identity document (instance id, region, zone, type,
//! AMI, account, private IP) plus `local-hostname` and `mac` from meta-data, fetched
//! concurrently with the user-data wait so they add no latency, and, in an auto scaling
//! group, `autoscaling/target-lifecycle-state` (the state the group is moving the instance
//! to: `InService` during a launch hook, `Terminated` once it is being replaced, or
//! `Warmed:*` in a warm pool). Tags are read only if
//! IMDS exposes them, in a single attempt: they are absent while an auto-scaling
//! lifecycle hook holds the instance, so waiting for them could hang a boot.
//! On Compute Engine they come from its metadata server (`imds::gcp`), under the same
//! names where they mean the same thing, plus `project-id`; on Azure (`imds::azure`) and
//! OpenStack (`imds::openstack`) likewise, plus `instance-name` (the VM's or server's
//! name) and on Azure `resource-group`.
//! Off-cloud (`--user-data-file`) they come from `--fact NAME=VALUE` flags or are absent,
//! and `instance.json` says so in its `source` field.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::imds::{Client, ImdsError};
use crate::state::envfile::{self, Env, ExportError, FACT_PREFIX};

/// The fact names, as `--fact` takes them; exported as `BOOTSTAGE_INSTANCE_ID` etc.
pub const NAMES: [&str; 13] = [
    "instance-id",
    "region",
    "availability-zone",
    "instance-type",
    "ami-id",
    "account-id",
    "local-ipv4",
    "local-hostname",
    "mac",
    "target-lifecycle-state",
    "project-id",
    "instance-name",
    "resource-group",
];

#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Facts {
    /// Where the facts came from: `imds` (EC2), `gcp` or `flags`.
    pub source: String,
    pub instance_id: Option<String>,
    pub region: Option<String>,
    pub availability_zone: Option<String>,
    pub instance_type: Option<String>,
    pub ami_id: Option<String>,
    pub account_id: Option<String>,
    pub local_ipv4: Option<String>,
    pub local_hostname: Option<String>,
    pub mac: Option<String>,
    /// In an auto scaling group: the lifecycle state the group is moving the instance to.
    #[serde(default)]
    pub target_lifecycle_state: Option<String>,
    /// When the instance entered `pending` (the identity document's `pendingTime`): where a
    /// launch lifecycle action's time limit is counted from.
    #[serde(default)]
    pub pending_time: Option<String>,
    /// On Compute Engine: the project's id. Left out of `instance.json` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    /// On Azure and OpenStack: the VM's (server's) name. Left out when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_name: Option<String>,
    /// On Azure: the VM's resource group. Left out when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_group: Option<String>,
    /// Instance tags, when IMDS exposes them; `null` otherwise.
    pub tags: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IdentityDocument {
    instance_id: Option<String>,
    region: Option<String>,
    availability_zone: Option<String>,
    instance_type: Option<String>,
    image_id: Option<String>,
    account_id: Option<String>,
    private_ip: Option<String>,
    pending_time: Option<String>,
}

impl Facts {
    /// This boot's facts as the metadata stage wrote them (`instance.json`), if it did.
    pub fn of(state: &crate::state::StateDir) -> Option<Facts> {
        let text = std::fs::read(state.instance_json()).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// The facts by their `NAMES` entry, in that order.
    pub fn named(&self) -> [(&'static str, Option<&str>); 13] {
        let values = [
            &self.instance_id,
            &self.region,
            &self.availability_zone,
            &self.instance_type,
            &self.ami_id,
            &self.account_id,
            &self.local_ipv4,
            &self.local_hostname,
            &self.mac,
            &self.target_lifecycle_state,
            &self.project_id,
            &self.instance_name,
            &self.resource_group,
        ];
        std::array::from_fn(|i| (NAMES[i], values[i].as_deref()))
    }

    fn slot(&mut self, name: &str) -> Option<&mut Option<String>> {
        Some(match name {
            "instance-id" => &mut self.instance_id,
            "region" => &mut self.region,
            "availability-zone" => &mut self.availability_zone,
            "instance-type" => &mut self.instance_type,
            "ami-id" => &mut self.ami_id,
            "account-id" => &mut self.account_id,
            "local-ipv4" => &mut self.local_ipv4,
            "local-hostname" => &mut self.local_hostname,
            "mac" => &mut self.mac,
            "target-lifecycle-state" => &mut self.target_lifecycle_state,
            "project-id" => &mut self.project_id,
            "instance-name" => &mut self.instance_name,
            "resource-group" => &mut self.resource_group,
            _ => return None,
        })
    }

    /// Facts given as `NAME=VALUE` flags (off-cloud).
    pub fn from_flags(flags: &[String]) -> Result<Facts, String> {
        let mut facts = Facts {
            source: "flags".into(),
            ..Facts::default()
        };
        for flag in flags {
            let (name, value) = flag
                .split_once('=')
                .ok_or_else(|| format!("--fact {flag:?}: expected NAME=VALUE"))?;
            let slot = facts.slot(name).ok_or_else(|| {
                format!("--fact {name:?}: unknown fact; known: {}", NAMES.join(", "))
            })?;
            *slot = Some(value.to_string());
        }
        Ok(facts)
    }

    /// The region AWS calls (SSM, Secrets Manager references) default to: EC2's region,
    /// or one given by `--fact`; another cloud's region is no AWS region.
    pub fn aws_region(&self) -> Option<String> {
        match self.source.as_str() {
            "imds" | "flags" => self.region.clone(),
            _ => None,
        }
    }

    /// Facts from IMDS; the identity document is required, the rest best effort.
    pub async fn from_imds(imds: &Client) -> Result<Facts, ImdsError> {
        let (document, local_hostname, mac, target_lifecycle_state, tags) = tokio::join!(
            imds.get_retrying("/latest/dynamic/instance-identity/document"),
            optional_text(imds, "/latest/meta-data/local-hostname"),
            optional_text(imds, "/latest/meta-data/mac"),
            optional_text(imds, super::TARGET_LIFECYCLE_STATE),
            tags(imds),
        );
        let doc: IdentityDocument =
            serde_json::from_slice(&document?).map_err(|e| ImdsError::Invalid {
                what: "the instance identity document".into(),
                why: format!("not JSON at line {} column {}", e.line(), e.column()),
            })?;
        Ok(Facts {
            source: "imds".into(),
            instance_id: doc.instance_id,
            region: doc.region,
            availability_zone: doc.availability_zone,
            instance_type: doc.instance_type,
            ami_id: doc.image_id,
            account_id: doc.account_id,
            local_ipv4: doc.private_ip,
            local_hostname: local_hostname?,
            mac: mac?,
            target_lifecycle_state: target_lifecycle_state?,
            pending_time: doc.pending_time,
            project_id: None,
            instance_name: None,
            resource_group: None,
            tags,
        })
    }

    /// Adds the facts to the environment as `BOOTSTAGE_…`; absent facts are left out.
    /// Tags become `BOOTSTAGE_TAG_<NAME>`; two tags that flatten to one name are both
    /// left out of the environment (still in `instance.json`), with a warning.
    pub fn export(&self, env: &mut Env) -> Result<(), ExportError> {
        for (name, value) in self.named() {
            if let Some(value) = value {
                env.insert_fact(
                    &format!("{FACT_PREFIX}{}", envfile::env_name(&[name])),
                    value,
                )?;
            }
        }
        let mut by_name: BTreeMap<String, Vec<(&str, &str)>> = BTreeMap::new();
        for (key, value) in self.tags.iter().flatten() {
            // Tags are anyone's with ec2:CreateTags: one that no env file can carry is left
            // out (and stays in instance.json), never the end of the boot.
            if value.contains('\0') || value.chars().any(envfile::is_noncharacter) {
                tracing::warn!(
                    tag = key,
                    "an instance tag's value has a NUL or a Unicode noncharacter, which systemd's EnvironmentFile= cannot take; leaving it out of params.env"
                );
                continue;
            }
            let name = format!(
                "{FACT_PREFIX}TAG_{}",
                envfile::env_name(&[key]).trim_start_matches('_')
            );
            by_name.entry(name).or_default().push((key, value));
        }
        for (name, tags) in by_name {
            match tags[..] {
                [(_, value)] => env.insert_fact(&name, value)?,
                _ => tracing::warn!(
                    variable = name,
                    tags = ?tags.iter().map(|t| t.0).collect::<Vec<_>>(),
                    "instance tags flatten to one variable; leaving it out of params.env"
                ),
            }
        }
        Ok(())
    }
}

async fn optional_text(imds: &Client, path: &str) -> Result<Option<String>, ImdsError> {
    match imds.get_retrying(path).await {
        Ok(body) => Ok(Some(String::from_utf8_lossy(&body).trim().to_string())),
        Err(ImdsError::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// One attempt at the tags; `None` when IMDS does not expose them or does not answer.
async fn tags(imds: &Client) -> Option<BTreeMap<String, String>> {
    const LIST: &str = "/latest/meta-data/tags/instance";
    let keys = match imds.get(LIST).await {
        Ok(body) => String::from_utf8_lossy(&body).into_owned(),
        Err(ImdsError::NotFound(_)) => {
            tracing::debug!("instance tags are not exposed in IMDS");
            return None;
        }
        Err(e) => {
            tracing::warn!(error = %e, "instance tags could not be read; going on without them");
            return None;
        }
    };
    let keys: Vec<&str> = keys
        .lines()
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .collect();
    let values = futures_util::future::join_all(keys.iter().map(|key| {
        let path = format!("{LIST}/{}", key.replace('%', "%25").replace(' ', "%20"));
        async move { imds.get(&path).await }
    }))
    .await;
    let mut tags = BTreeMap::new();
    for (key, value) in keys.into_iter().zip(values) {
        match value {
            Ok(v) if !key.contains('/') => {
                tags.insert(key.to_string(), String::from_utf8_lossy(&v).into_owned());
            }
            Ok(_) => tracing::warn!(tag = key, "skipping an instance tag whose name has a '/'"),
            Err(e) => {
                tracing::warn!(tag = key, error = %e, "skipping an instance tag that could not be read")
            }
        }
    }
    Some(tags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_export() {
        let facts =
            Facts::from_flags(&["instance-id=i-1".into(), "region=eu-west-1".into()]).unwrap();
        assert_eq!(facts.instance_id.as_deref(), Some("i-1"));
        let mut env = Env::default();
        let tagged = Facts {
            tags: Some(
                [
                    ("Name".into(), "web".into()),
                    ("a-b".into(), "1".into()),
                    ("A_B".into(), "2".into()),
                ]
                .into(),
            ),
            ..facts
        };
        tagged.export(&mut env).unwrap();
        let got: Vec<_> = env.iter().collect();
        assert_eq!(
            got,
            [
                ("BOOTSTAGE_INSTANCE_ID", "i-1"),
                ("BOOTSTAGE_REGION", "eu-west-1"),
                ("BOOTSTAGE_TAG_NAME", "web"),
            ]
        );
        assert!(
            Facts::from_flags(&["colour=red".into()])
                .unwrap_err()
                .contains("unknown fact")
        );
        assert!(Facts::from_flags(&["region".into()]).is_err());
    }

    /// Only EC2's region (or one given by --fact) is a default region for AWS calls.
    #[test]
    fn aws_region_is_ec2s_only() {
        let with = |source: &str| Facts {
            source: source.into(),
            region: Some("r-1".into()),
            ..Facts::default()
        };
        assert_eq!(with("imds").aws_region().as_deref(), Some("r-1"));
        assert_eq!(with("flags").aws_region().as_deref(), Some("r-1"));
        assert_eq!(with("gcp").aws_region(), None);
        assert_eq!(with("azure").aws_region(), None);
        assert_eq!(with("openstack").aws_region(), None);
    }
}
