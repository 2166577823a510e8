//! Wake-ups for watch mode from an SQS queue: which messages name something bootstage
//! syncs, and the queue calls (long-poll receive, delete, try again later).
//!
//! A message is one of:
//! - an S3 event notification (`{"Records": [{"s3": {"bucket": {"name"}, "object":
//!   {"key"}}}]}`, the key URL-encoded as S3 sends it), straight from S3 or wrapped by
//!   SNS (`{"Type": "Notification", "Message": "<the event as a string>"}`); it names
//!   every watched source whose bucket it is and whose prefix the key is under (or whose
//!   archive key it is);
//! - a deployment message: `{"sync": "all"}`, or `{"sync": ["/srv/app/config", …]}`
//!   naming destinations (`to`) or sources (`from`);
//! - an EventBridge event saying a Parameter Store parameter or a Secrets Manager
//!   secret changed (`eventbridge.rs`): it names the parameters' values when it names a
//!   reference or an import of this instance (they are resolved again);
//! - anything else (S3's `s3:TestEvent`, another bucket, another EventBridge event, not
//!   JSON): names nothing.
//!
//! The queue is read, never managed: one queue per instance (SQS gives each message to
//! one reader), created and removed by whatever launches the instance. Message bodies are
//! never logged.

pub mod eventbridge;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, MessageSystemAttributeName};
use serde_json::Value;

use crate::aws::{self, Kind};
use crate::sync::source::{Location, url_decode};
pub use eventbridge::Names;

/// A watched entry: where it syncs from, and to.
#[derive(Debug, Clone)]
pub struct Watched {
    /// `None` for a release pointer (its source is known once a pass reads it).
    pub from: Option<Location>,
    pub from_url: String,
    pub to: PathBuf,
    /// The release pointer's SSM parameter: a Parameter Store event naming it names
    /// this entry.
    pub release: Option<String>,
}

/// What one message asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wake {
    /// Every watched entry (a deployment message for all).
    pub all: bool,
    /// These entries, by index.
    pub named: BTreeSet<usize>,
    /// The parameters' references and imports: resolve them again.
    pub values: bool,
}

impl Wake {
    /// Every watched entry.
    pub fn all() -> Wake {
        Wake {
            all: true,
            ..Wake::default()
        }
    }

    /// These watched entries.
    pub fn some(named: impl IntoIterator<Item = usize>) -> Wake {
        Wake {
            named: named.into_iter().collect(),
            ..Wake::default()
        }
    }

    /// The references and imports.
    #[cfg(test)]
    pub fn values() -> Wake {
        Wake {
            values: true,
            ..Wake::default()
        }
    }

    /// `None` when the message names nothing of ours: no watched entry, and no reference
    /// or import in `names`.
    pub fn of(body: &str, watched: &[Watched], names: &Names) -> Option<Wake> {
        let value: Value = serde_json::from_str(body).ok()?;
        Wake::of_value(&value, watched, names, 0)
    }

    fn of_value(value: &Value, watched: &[Watched], names: &Names, depth: u8) -> Option<Wake> {
        // SNS fan-out: the event is the notification's Message, as a string.
        if value.get("Type").and_then(Value::as_str) == Some("Notification")
            && let Some(inner) = value.get("Message").and_then(Value::as_str)
            && depth == 0
        {
            let inner: Value = serde_json::from_str(inner).ok()?;
            return Wake::of_value(&inner, watched, names, depth + 1);
        }
        if let Some(sync) = value.get("sync") {
            return deployment(sync, watched);
        }
        if let Some(changed) = eventbridge::changed(value) {
            let mut wake = Wake {
                values: names.contain(&changed),
                ..Wake::default()
            };
            for (i, w) in watched.iter().enumerate() {
                if let Some(release) = &w.release
                    && Names::of_parameter(release).contain(&changed)
                {
                    wake.named.insert(i);
                }
            }
            return (wake != Wake::default()).then_some(wake);
        }
        let records = value.get("Records")?.as_array()?;
        let mut named = BTreeSet::new();
        for record in records {
            let s3 = record.get("s3");
            let bucket = s3
                .and_then(|s| s.pointer("/bucket/name"))
                .and_then(Value::as_str);
            let key = s3
                .and_then(|s| s.pointer("/object/key"))
                .and_then(Value::as_str);
            let (Some(bucket), Some(key)) = (bucket, key) else {
                continue;
            };
            let key = url_decode(key);
            for (i, w) in watched.iter().enumerate() {
                let ours = match &w.from {
                    Some(Location::S3 { bucket: b, prefix }) => {
                        b == bucket && key.starts_with(prefix)
                    }
                    Some(Location::S3Archive {
                        bucket: b, key: k, ..
                    }) => b == bucket && *k == key,
                    Some(Location::Dir { .. } | Location::FileArchive { .. }) | None => false,
                };
                if ours {
                    named.insert(i);
                }
            }
        }
        (!named.is_empty()).then(|| Wake::some(named))
    }
}

/// `{"sync": "all"}` or `{"sync": [destination or source, …]}`.
fn deployment(sync: &Value, watched: &[Watched]) -> Option<Wake> {
    if sync.as_str() == Some("all") {
        return Some(Wake::all());
    }
    let names: Vec<&str> = sync.as_array()?.iter().filter_map(Value::as_str).collect();
    let named: BTreeSet<usize> = watched
        .iter()
        .enumerate()
        .filter(|(_, w)| {
            names
                .iter()
                .any(|n| w.to.as_os_str() == *n || (!w.from_url.is_empty() && w.from_url == *n))
        })
        .map(|(i, _)| i)
        .collect();
    (!named.is_empty()).then(|| Wake::some(named))
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("{url}: access refused: {why}")]
    Refused { url: String, why: String },
    #[error("{url}: {why}")]
    Failed { url: String, why: String },
}

/// One received message.
#[derive(Debug, Clone)]
pub struct Message {
    pub handle: String,
    pub body: String,
    /// How many times SQS has handed it out (1 the first time).
    pub receives: u32,
}

/// The queue a watcher reads.
pub struct Queue {
    client: aws_sdk_sqs::Client,
    url: String,
}

/// Longest a receive waits for a message (SQS's maximum).
pub const LONG_POLL: Duration = Duration::from_secs(20);

impl Queue {
    pub fn new(client: aws_sdk_sqs::Client, url: &str) -> Queue {
        Queue {
            client,
            url: url.to_string(),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The region a queue URL names (`https://sqs.eu-west-1.amazonaws.com/…`), if any.
    pub fn region_of(url: &str) -> Option<String> {
        let host = url.split("://").nth(1)?.split('/').next()?;
        let mut parts = host.split('.');
        match (parts.next(), parts.next()) {
            (Some("sqs"), Some(region)) if region.contains('-') => Some(region.to_string()),
            _ => None,
        }
    }

    fn error<E>(
        &self,
        action: &str,
        e: aws_sdk_sqs::error::SdkError<E, aws_sdk_sqs::config::http::HttpResponse>,
    ) -> QueueError
    where
        E: aws_sdk_sqs::error::ProvideErrorMetadata + std::error::Error + 'static,
    {
        let url = self.url.clone();
        let failure = aws::classify("SQS", &e);
        match failure.kind {
            Kind::Refused => QueueError::Refused {
                url,
                why: format!("{action}: {failure}"),
            },
            _ => QueueError::Failed {
                url,
                why: failure.message,
            },
        }
    }

    /// Waits up to [`LONG_POLL`] for up to 10 messages, each hidden from other receives
    /// for `hidden` (a pass's deadline and more: it is deleted only after its pass).
    pub async fn receive(&self, hidden: Duration) -> Result<Vec<Message>, QueueError> {
        let answer = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .wait_time_seconds(LONG_POLL.as_secs() as i32)
            .max_number_of_messages(10)
            .visibility_timeout(hidden.as_secs().clamp(1, 43_200) as i32)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(|e| self.error("sqs:ReceiveMessage", e))?;
        Ok(answer
            .messages()
            .iter()
            .filter_map(|m| {
                let receives = m
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(1);
                Some(Message {
                    handle: m.receipt_handle()?.to_string(),
                    body: m.body().unwrap_or_default().to_string(),
                    receives,
                })
            })
            .collect())
    }

    /// Deletes messages whose work is done, ten to a request.
    pub async fn delete(&self, handles: &[String]) -> Result<(), QueueError> {
        for batch in handles.chunks(10) {
            let entries = batch
                .iter()
                .enumerate()
                .map(|(i, h)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(h)
                        .build()
                        .expect("id and handle are set")
                })
                .collect();
            let answer = self
                .client
                .delete_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| self.error("sqs:DeleteMessage", e))?;
            if let Some(failed) = answer.failed().first() {
                return Err(QueueError::Failed {
                    url: self.url.clone(),
                    why: format!("sqs:DeleteMessage: {}", failed.code()),
                });
            }
        }
        Ok(())
    }

    /// Makes a message visible again after `after`, for the pass that failed to be tried
    /// again then.
    pub async fn retry_later(&self, handle: &str, after: Duration) -> Result<(), QueueError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(handle)
            .visibility_timeout(after.as_secs().min(43_200) as i32)
            .send()
            .await
            .map_err(|e| self.error("sqs:ChangeMessageVisibility", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watched() -> Vec<Watched> {
        [
            "s3://b/app/config/",
            "s3://b/rel/app.tar.zst",
            "s3://other/x/",
        ]
        .iter()
        .enumerate()
        .map(|(i, url)| Watched {
            from: Some(Location::parse(url).unwrap()),
            from_url: url.to_string(),
            to: PathBuf::from(format!("/srv/d{i}")),
            release: None,
        })
        .collect()
    }

    fn event(bucket: &str, key: &str) -> String {
        serde_json::json!({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
            "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": 1}}}]})
        .to_string()
    }

    #[test]
    fn s3_events_name_the_sources_they_touch() {
        let w = watched();
        let some = |i: &[usize]| Some(Wake::some(i.iter().copied()));
        assert_eq!(
            Wake::of(&event("b", "app/config/a.conf"), &w, &Names::default()),
            some(&[0])
        );
        assert_eq!(
            Wake::of(
                &event("b", "app/config/with+space%21"),
                &w,
                &Names::default()
            ),
            some(&[0])
        );
        assert_eq!(
            Wake::of(&event("b", "rel/app.tar.zst"), &w, &Names::default()),
            some(&[1])
        );
        assert_eq!(
            Wake::of(&event("b", "rel/app.tar.zst.bak"), &w, &Names::default()),
            None
        );
        assert_eq!(
            Wake::of(&event("b", "app/configs/x"), &w, &Names::default()),
            None
        );
        assert_eq!(
            Wake::of(&event("c", "app/config/a"), &w, &Names::default()),
            None
        );
        let sns =
            serde_json::json!({"Type": "Notification", "TopicArn": "arn:aws:sns:us-east-1:1:t",
            "Message": event("other", "x/y")})
            .to_string();
        assert_eq!(Wake::of(&sns, &w, &Names::default()), some(&[2]));
        let test_event = r#"{"Service":"Amazon S3","Event":"s3:TestEvent","Bucket":"b"}"#;
        assert_eq!(Wake::of(test_event, &w, &Names::default()), None);
        assert_eq!(Wake::of("not json", &w, &Names::default()), None);
    }

    #[test]
    fn deployment_messages_name_destinations_or_sources() {
        let w = watched();
        assert_eq!(
            Wake::of(r#"{"sync": "all"}"#, &w, &Names::default()),
            Some(Wake::all())
        );
        assert_eq!(
            Wake::of(
                r#"{"sync": ["/srv/d2", "s3://b/rel/app.tar.zst"]}"#,
                &w,
                &Names::default()
            ),
            Some(Wake::some([1, 2]))
        );
        assert_eq!(
            Wake::of(r#"{"sync": ["/srv/elsewhere"]}"#, &w, &Names::default()),
            None
        );
        assert_eq!(
            Queue::region_of("https://sqs.eu-west-1.amazonaws.com/123/q").as_deref(),
            Some("eu-west-1")
        );
        assert_eq!(Queue::region_of("http://127.0.0.1:5000/123/q"), None);
    }

    /// A Parameter Store event naming a release pointer names its destination; with a
    /// reference of the same name, the values too.
    #[test]
    fn a_release_pointer_event_names_its_destination() {
        let mut w = watched();
        w.push(Watched {
            from: None,
            from_url: String::new(),
            to: PathBuf::from("/srv/app/code"),
            release: Some("/shop/web/release".into()),
        });
        let event = |name: &str| {
            serde_json::json!({"version": "0", "source": "aws.ssm", "detail-type": "Parameter Store Change",
                "detail": {"name": name, "type": "String", "operation": "Update"}})
            .to_string()
        };
        let none = Names::default();
        assert_eq!(
            Wake::of(&event("/shop/web/release"), &w, &none),
            Some(Wake::some([3]))
        );
        assert_eq!(Wake::of(&event("/shop/web/other"), &w, &none), None);
        let both = Names::of_parameter("/shop/web/release");
        assert_eq!(
            Wake::of(&event("/shop/web/release"), &w, &both),
            Some(Wake {
                named: [3].into(),
                values: true,
                ..Wake::default()
            })
        );
        // A deployment message naming an empty source names no pointer.
        assert_eq!(Wake::of(r#"{"sync": [""]}"#, &w, &none), None);
    }

    /// An EventBridge event wakes the values when it names a reference or an import of
    /// ours, straight or through SNS; otherwise it names nothing (and is deleted).
    #[test]
    fn eventbridge_events_name_the_values_they_change() {
        let w = watched();
        let ours = {
            let mut n = Names::default();
            n.add_parameter("/rotation/db-password");
            n.add_secret("rotation/api-token");
            n
        };
        let theirs = {
            let mut n = Names::default();
            n.add_parameter("/elsewhere/db-password");
            n.add_secret("elsewhere/api-token");
            n
        };
        for fixture in [
            include_str!("../../tests/fixtures/eventbridge/parameter-store-change.json"),
            include_str!("../../tests/fixtures/eventbridge/secretsmanager-rotation-succeeded.json"),
            include_str!("../../tests/fixtures/eventbridge/secretsmanager-put-secret-value.json"),
        ] {
            let sns = serde_json::json!({"Type": "Notification", "Message": fixture}).to_string();
            for body in [fixture, sns.as_str()] {
                assert_eq!(Wake::of(body, &w, &ours), Some(Wake::values()));
                assert_eq!(Wake::of(body, &w, &theirs), None);
                assert_eq!(Wake::of(body, &w, &Names::default()), None);
            }
        }
    }
}
