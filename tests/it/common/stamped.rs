//! A loopback proxy in front of an HTTP server (moto) that notes when each answer left
//! it, on the clock the emulators stamp their calls with (µs since the epoch), and which
//! Query API action a POST asked for: moto's log has no times and says `POST /` for every
//! EC2 action. The tests that prove an order (forensics and tags before ABANDON) read it.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::Response;

/// Now, in µs since the epoch.
pub fn now_usec() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// A request the upstream answered: `METHOD /path` and, for a Query API call, its
/// `Action`; when the answer left the upstream.
#[derive(Clone, Debug)]
pub struct Answered {
    pub request: String,
    pub action: Option<String>,
    pub usec: u64,
}

pub struct Stamped {
    pub url: String,
    answered: Arc<Mutex<Vec<Answered>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Stamped {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Stamped {
    /// Every answer so far, in order.
    pub fn answered(&self) -> Vec<Answered> {
        self.answered.lock().unwrap().clone()
    }

    /// How many calls of the Query API `action` were answered.
    pub fn count(&self, action: &str) -> usize {
        self.answered
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.action.as_deref() == Some(action))
            .count()
    }
}

type Shared = (String, reqwest::Client, Arc<Mutex<Vec<Answered>>>);

/// Starts the proxy on 127.0.0.1 in front of `upstream`.
pub async fn stamped(upstream: &str) -> Stamped {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let answered = Arc::new(Mutex::new(Vec::new()));
    let shared: Arc<Shared> = Arc::new((
        upstream.to_string(),
        reqwest::Client::builder().no_proxy().build().unwrap(),
        answered.clone(),
    ));
    let app = axum::Router::new().fallback(forward).with_state(shared);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Stamped {
        url,
        answered,
        task,
    }
}

async fn forward(
    State(s): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let action = match method == Method::POST {
        true => String::from_utf8_lossy(&body)
            .split('&')
            .find_map(|kv| kv.strip_prefix("Action="))
            .map(str::to_string),
        false => None,
    };
    let response = pass(&s.0, &s.1, method.clone(), &uri, headers, body).await;
    s.2.lock().unwrap().push(Answered {
        request: format!("{method} {}", uri.path()),
        action,
        usec: now_usec(),
    });
    response
}

/// The request, to `upstream`; its answer (the proxies that hold a request back use it).
pub async fn pass(
    upstream: &str,
    client: &reqwest::Client,
    method: Method,
    uri: &Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = client
        .request(method, format!("{upstream}{target}"))
        .body(body);
    for (name, value) in &headers {
        if name != "host" && name != "content-length" {
            request = request.header(name, value);
        }
    }
    let answer = request.send().await.unwrap();
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if name != "content-length" && name != "transfer-encoding" {
            response = response.header(name, value);
        }
    }
    response
        .body(Body::from(answer.bytes().await.unwrap()))
        .unwrap()
}
