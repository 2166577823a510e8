//! A webhook receiver on loopback: records every POST (headers and JSON body) and answers
//! each with the next status of a script (then 200), so a test can make it fail first.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;

#[derive(Clone, Debug)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: serde_json::Value,
    /// CLOCK_MONOTONIC at arrival, in microseconds (systemd's `…TimestampMonotonic`).
    pub monotonic_usec: u64,
}

#[derive(Default)]
struct Inner {
    script: VecDeque<u16>,
    received: Vec<Received>,
}

pub struct Webhook {
    pub url: String,
    inner: Arc<Mutex<Inner>>,
    notify: Arc<tokio::sync::Notify>,
    _server: tokio::task::JoinHandle<()>,
}

impl Webhook {
    /// Answers the first requests with `script` (e.g. `[503, 503]`), then 200.
    pub async fn start(script: &[u16]) -> Webhook {
        let inner = Arc::new(Mutex::new(Inner {
            script: script.iter().copied().collect(),
            received: Vec::new(),
        }));
        let notify = Arc::new(tokio::sync::Notify::new());
        let state = (inner.clone(), notify.clone());
        let app = axum::Router::new()
            .route("/hook", post(receive))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Webhook {
            url,
            inner,
            notify,
            _server: server,
        }
    }

    pub fn received(&self) -> Vec<Received> {
        self.inner.lock().unwrap().received.clone()
    }

    /// Waits (bounded) until `n` requests have arrived.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        self.wait_for_else(n, String::new).await
    }

    /// As [`Webhook::wait_for`]; a timeout's message ends with `context()` (a boot's
    /// journal, say), so a notice that never came shows why.
    pub async fn wait_for_else(&self, n: usize, context: impl FnOnce() -> String) -> Vec<Received> {
        let waited = tokio::time::timeout(std::time::Duration::from_secs(60), async {
            loop {
                let notified = self.notify.notified();
                if self.received().len() >= n {
                    return self.received();
                }
                notified.await;
            }
        })
        .await;
        match waited {
            Ok(received) => received,
            Err(_) => panic!(
                "the webhook received {} of {n} notices within 60 s\n{}",
                self.received().len(),
                context()
            ),
        }
    }
}

type Shared = (Arc<Mutex<Inner>>, Arc<tokio::sync::Notify>);

async fn receive(
    State((inner, notify)): State<Shared>,
    headers: HeaderMap,
    body: String,
) -> StatusCode {
    let status = {
        let mut inner = inner.lock().unwrap();
        inner.received.push(Received {
            monotonic_usec: nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
                .map(|t| std::time::Duration::from(t).as_micros() as u64)
                .unwrap_or_default(),
            headers,
            body: serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body)),
        });
        inner.script.pop_front().unwrap_or(200)
    };
    notify.notify_waiters();
    StatusCode::from_u16(status).unwrap()
}
