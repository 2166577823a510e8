//! The one construction of a plain HTTP(S) client for what the AWS SDK does not carry:
//! the notices' webhook (`stage::notice::deliver`) and the EC2 Query API (`aws::ec2`).
//! rustls with the system's CA store (no OpenSSL), HTTP/1.1, http:// allowed (loopback
//! emulators, endpoint overrides), a bound on connecting. Each caller bounds its requests.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A client that connects within `connect`; an error when https has no CA store.
pub fn client(connect: Duration) -> Result<HttpsClient, String> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| format!("no CA certificates for https: {e}"))?
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

/// The chain of `e`'s sources, `: `-joined (a connection failure's causes).
pub fn source_chain(e: &dyn std::error::Error) -> String {
    let mut parts = Vec::new();
    let mut source = e.source();
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    parts.join(": ")
}
