//! EC2's instance metadata service (IMDS), the emulator's default flavor: IMDSv2 tokens,
//! user-data, meta-data items, the identity document, instance tags, and the paths an
//! instance's life after boot changes (see the crate's documentation).

use std::time::{Duration, Instant};

use axum::http::{HeaderMap, Method, StatusCode};
use serde::{Deserialize, Serialize};

use crate::{Config, Reply, Shared, answer, lock};

pub(crate) const TOKEN: &str = "x-aws-ec2-metadata-token";
const TOKEN_TTL: &str = "x-aws-ec2-metadata-token-ttl-seconds";

/// How the token endpoint answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TokenMode {
    #[default]
    Normal,
    /// 403: IMDS is disabled for the instance.
    Forbidden,
    /// 404: an IMDSv1-only endpoint.
    NotFound,
    /// 405: an IMDSv1-only endpoint.
    MethodNotAllowed,
    /// Never answers: the hop-limit trap inside a container.
    Hang,
}

/// The instance the emulator describes.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Instance {
    pub instance_id: String,
    pub region: String,
    pub availability_zone: String,
    pub instance_type: String,
    pub image_id: String,
    pub account_id: String,
    pub private_ip: String,
    pub local_hostname: String,
    pub mac: String,
    /// The identity document's `pendingTime` (RFC 3339).
    pub pending_time: String,
}

impl Default for Instance {
    fn default() -> Self {
        Instance {
            instance_id: "i-0123456789abcdef0".into(),
            region: "eu-west-1".into(),
            availability_zone: "eu-west-1a".into(),
            instance_type: "t3.micro".into(),
            image_id: "ami-0abcdef1234567890".into(),
            account_id: "123456789012".into(),
            private_ip: "10.0.0.12".into(),
            local_hostname: "ip-10-0-0-12.eu-west-1.compute.internal".into(),
            mac: "0e:00:00:00:00:01".into(),
            // The instance entered pending as the emulator was set up.
            pending_time: humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                .to_string(),
        }
    }
}

impl Shared {
    /// A request to EC2's IMDS, once the scripted hangs and 503s are past.
    pub(crate) fn aws(
        &self,
        config: &Config,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Reply {
        if path == "/latest/api/token" {
            return match *method {
                Method::PUT
                    if self
                        .token_puts
                        .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                        < config.hang_token_first =>
                {
                    Reply::Hang
                }
                Method::PUT => self.token(config, headers),
                _ => answer(StatusCode::METHOD_NOT_ALLOWED, ""),
            };
        }
        if *method != Method::GET {
            return answer(StatusCode::METHOD_NOT_ALLOWED, "");
        }
        match headers.get(TOKEN) {
            Some(token) => {
                let valid = token
                    .to_str()
                    .ok()
                    .and_then(|t| lock(&self.tokens).get(t).copied())
                    .is_some_and(|expires| Instant::now() < expires);
                if !valid {
                    return answer(StatusCode::UNAUTHORIZED, "");
                }
            }
            None if config.v2_only => return answer(StatusCode::UNAUTHORIZED, ""),
            None => {}
        }
        self.get(config, path)
    }

    fn token(&self, config: &Config, headers: &HeaderMap) -> Reply {
        match config.token {
            TokenMode::Normal => {}
            TokenMode::Forbidden => return answer(StatusCode::FORBIDDEN, ""),
            TokenMode::NotFound => return answer(StatusCode::NOT_FOUND, ""),
            TokenMode::MethodNotAllowed => return answer(StatusCode::METHOD_NOT_ALLOWED, ""),
            TokenMode::Hang => return Reply::Hang,
        }
        if headers.contains_key("x-forwarded-for") {
            return answer(StatusCode::FORBIDDEN, "");
        }
        let ttl = headers
            .get(TOKEN_TTL)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|ttl| (1..=21_600).contains(ttl));
        let Some(ttl) = ttl else {
            return answer(StatusCode::BAD_REQUEST, "");
        };
        let mut lifetime = Duration::from_secs(ttl);
        if let Some(cap) = config.max_token_ttl {
            lifetime = lifetime.min(cap);
        }
        let mut tokens = lock(&self.tokens);
        let token = format!("AQAE{:016x}{:08x}", random_u64(), tokens.len());
        tokens.insert(token.clone(), Instant::now() + lifetime);
        Reply::Answer(
            StatusCode::OK,
            vec![(TOKEN_TTL, lifetime.as_secs().to_string())],
            token.into_bytes(),
        )
    }

    fn get(&self, config: &Config, path: &str) -> Reply {
        let i = &config.instance;
        let text = |s: &str| answer(StatusCode::OK, s);
        let optional = |value: &Option<String>| match value {
            Some(value) => text(value),
            None => answer(StatusCode::NOT_FOUND, ""),
        };
        match path {
            "/latest/user-data" => match self.user_data_now(config) {
                Some(data) => Reply::Answer(
                    StatusCode::OK,
                    vec![("content-type", "application/octet-stream".into())],
                    data,
                ),
                None => answer(StatusCode::NOT_FOUND, ""),
            },
            "/latest/meta-data" | "/latest/meta-data/" => {
                let autoscaling = config.target_lifecycle_state.is_some();
                let spot = config.spot_instance_action.is_some();
                let items = [
                    ("ami-id", true),
                    ("autoscaling/", autoscaling),
                    // Always: events/maintenance/scheduled always answers.
                    ("events/", true),
                    ("instance-id", true),
                    ("instance-type", true),
                    ("local-hostname", true),
                    ("local-ipv4", true),
                    ("mac", true),
                    ("placement/", true),
                    ("spot/", spot),
                    ("tags/", true),
                ];
                let listed: Vec<_> = items.iter().filter(|i| i.1).map(|i| i.0).collect();
                text(&listed.join("\n"))
            }
            "/latest/meta-data/autoscaling" | "/latest/meta-data/autoscaling/" => optional(
                &config
                    .target_lifecycle_state
                    .as_ref()
                    .map(|_| "target-lifecycle-state".into()),
            ),
            "/latest/meta-data/spot" | "/latest/meta-data/spot/" => optional(
                &config
                    .spot_instance_action
                    .as_ref()
                    .map(|_| "instance-action".into()),
            ),
            "/latest/meta-data/spot/instance-action" => optional(&config.spot_instance_action),
            "/latest/meta-data/events" | "/latest/meta-data/events/" => match config.rebalance {
                Some(_) => text("maintenance/\nrecommendations/"),
                None => text("maintenance/"),
            },
            "/latest/meta-data/events/maintenance" | "/latest/meta-data/events/maintenance/" => {
                text("history\nscheduled")
            }
            "/latest/meta-data/events/maintenance/history" => text("[]"),
            "/latest/meta-data/events/maintenance/scheduled" => {
                text(config.maintenance_scheduled.as_deref().unwrap_or("[]"))
            }
            "/latest/meta-data/events/recommendations"
            | "/latest/meta-data/events/recommendations/" => {
                optional(&config.rebalance.as_ref().map(|_| "rebalance".into()))
            }
            "/latest/meta-data/events/recommendations/rebalance" => optional(&config.rebalance),
            "/latest/meta-data/instance-id" => text(&i.instance_id),
            "/latest/meta-data/ami-id" => text(&i.image_id),
            "/latest/meta-data/instance-type" => text(&i.instance_type),
            "/latest/meta-data/local-ipv4" => text(&i.private_ip),
            "/latest/meta-data/local-hostname" => text(&i.local_hostname),
            "/latest/meta-data/mac" => text(&i.mac),
            "/latest/meta-data/autoscaling/target-lifecycle-state" => {
                optional(&config.target_lifecycle_state)
            }
            "/latest/meta-data/placement/region" => text(&i.region),
            "/latest/meta-data/placement/availability-zone" => text(&i.availability_zone),
            "/latest/dynamic/instance-identity/document" => {
                let doc = serde_json::json!({
                    "accountId": i.account_id, "architecture": "x86_64",
                    "availabilityZone": i.availability_zone, "imageId": i.image_id,
                    "instanceId": i.instance_id, "instanceType": i.instance_type,
                    "pendingTime": i.pending_time, "privateIp": i.private_ip,
                    "region": i.region, "version": "2017-09-30",
                });
                text(&serde_json::to_string_pretty(&doc).unwrap_or_default())
            }
            _ => match (
                &config.tags,
                path.strip_prefix("/latest/meta-data/tags/instance"),
            ) {
                (Some(tags), Some("" | "/")) => {
                    text(&tags.keys().cloned().collect::<Vec<_>>().join("\n"))
                }
                (Some(tags), Some(key)) => match tags.get(&percent_decode(&key[1..])) {
                    Some(value) => text(value),
                    None => answer(StatusCode::NOT_FOUND, ""),
                },
                _ => answer(StatusCode::NOT_FOUND, ""),
            },
        }
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (
            bytes[i],
            s.get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok()),
        ) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unpredictable enough for test tokens: std's randomly keyed hasher over nothing.
fn random_u64() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(0u8)
}
