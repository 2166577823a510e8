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
//! - anything else (S3's `s3:TestEvent`, another bucket, not JSON): names nothing.
//!
//! The queue is read, never managed: one queue per instance (SQS gives each message to
//! one reader), created and removed by whatever launches the instance. Message bodies are
//! never logged.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, MessageSystemAttributeName};
use serde_json::Value;

use crate::aws::{self, Kind};
use crate::sync::source::{Location, url_decode};

/// A watched entry: where it syncs from, and to.
#[derive(Debug, Clone)]
pub struct Watched {
    pub from: Location,
    pub from_url: String,
    pub to: PathBuf,
}

/// What one message asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wake {
    /// Every watched entry (a deployment message for all).
    All,
    /// These entries, by index.
    Some(BTreeSet<usize>),
}

impl Wake {
    /// `None` when the message names nothing of ours.
    pub fn of(body: &str, watched: &[Watched]) -> Option<Wake> {
        let value: Value = serde_json::from_str(body).ok()?;
        Wake::of_value(&value, watched, 0)
    }

    fn of_value(value: &Value, watched: &[Watched], depth: u8) -> Option<Wake> {
        // SNS fan-out: the S3 event is the notification's Message, as a string.
        if value.get("Type").and_then(Value::as_str) == Some("Notification")
            && let Some(inner) = value.get("Message").and_then(Value::as_str)
            && depth == 0
        {
            let inner: Value = serde_json::from_str(inner).ok()?;
            return Wake::of_value(&inner, watched, depth + 1);
        }
        if let Some(sync) = value.get("sync") {
            return deployment(sync, watched);
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
                    Location::S3 { bucket: b, prefix } => b == bucket && key.starts_with(prefix),
                    Location::S3Archive {
                        bucket: b, key: k, ..
                    } => b == bucket && *k == key,
                    Location::Dir { .. } | Location::FileArchive { .. } => false,
                };
                if ours {
                    named.insert(i);
                }
            }
        }
        (!named.is_empty()).then_some(Wake::Some(named))
    }
}

/// `{"sync": "all"}` or `{"sync": [destination or source, …]}`.
fn deployment(sync: &Value, watched: &[Watched]) -> Option<Wake> {
    if sync.as_str() == Some("all") {
        return Some(Wake::All);
    }
    let names: Vec<&str> = sync.as_array()?.iter().filter_map(Value::as_str).collect();
    let named: BTreeSet<usize> = watched
        .iter()
        .enumerate()
        .filter(|(_, w)| {
            names
                .iter()
                .any(|n| w.to.as_os_str() == *n || w.from_url == *n)
        })
        .map(|(i, _)| i)
        .collect();
    (!named.is_empty()).then_some(Wake::Some(named))
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
            from: Location::parse(url).unwrap(),
            from_url: url.to_string(),
            to: PathBuf::from(format!("/srv/d{i}")),
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
        let some = |i: &[usize]| Some(Wake::Some(i.iter().copied().collect()));
        assert_eq!(Wake::of(&event("b", "app/config/a.conf"), &w), some(&[0]));
        assert_eq!(
            Wake::of(&event("b", "app/config/with+space%21"), &w),
            some(&[0])
        );
        assert_eq!(Wake::of(&event("b", "rel/app.tar.zst"), &w), some(&[1]));
        assert_eq!(Wake::of(&event("b", "rel/app.tar.zst.bak"), &w), None);
        assert_eq!(Wake::of(&event("b", "app/configs/x"), &w), None);
        assert_eq!(Wake::of(&event("c", "app/config/a"), &w), None);
        let sns =
            serde_json::json!({"Type": "Notification", "TopicArn": "arn:aws:sns:us-east-1:1:t",
            "Message": event("other", "x/y")})
            .to_string();
        assert_eq!(Wake::of(&sns, &w), some(&[2]));
        let test_event = r#"{"Service":"Amazon S3","Event":"s3:TestEvent","Bucket":"b"}"#;
        assert_eq!(Wake::of(test_event, &w), None);
        assert_eq!(Wake::of("not json", &w), None);
    }

    #[test]
    fn deployment_messages_name_destinations_or_sources() {
        let w = watched();
        assert_eq!(Wake::of(r#"{"sync": "all"}"#, &w), Some(Wake::All));
        assert_eq!(
            Wake::of(r#"{"sync": ["/srv/d2", "s3://b/rel/app.tar.zst"]}"#, &w),
            Some(Wake::Some([1, 2].into()))
        );
        assert_eq!(Wake::of(r#"{"sync": ["/srv/elsewhere"]}"#, &w), None);
        assert_eq!(
            Queue::region_of("https://sqs.eu-west-1.amazonaws.com/123/q").as_deref(),
            Some("eu-west-1")
        );
        assert_eq!(Queue::region_of("http://127.0.0.1:5000/123/q"), None);
    }
}
