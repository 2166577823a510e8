//! The S3-compatible server `scripts/bench-sync.py` runs beside moto: s3s-fs's file-system
//! backend and S3 protocol, served with these changes to s3s-fs's own binary.
//!
//! - `TCP_NODELAY` on every connection. s3s-fs writes a response's head and body in two
//!   writes; without NODELAY, Nagle holds the body until the client ACKs the head, and the
//!   client delays that ACK by up to 40 ms, so every small GET costs ~40 ms whatever the
//!   client does (measured: 81 s for 2,020 objects at concurrency 1). Real S3 endpoints,
//!   like nginx and Go servers, do not stall so.
//! - Where s3s-fs answers otherwise than S3, and a client pays for it, S3's answer:
//!   - listings carry each object's ETag (s3s-fs lists none; aws-cli then sends a HEAD per
//!     object, and bootstage falls back to LastModified). The ETags PUTs answered are kept
//!     in memory, so that a LIST costs what S3's does, not a HEAD per object inside it;
//!   - an empty `delimiter=` (rclone --fast-list sends one) means none (s3s-fs lists
//!     nothing);
//!   - a GET with `If-None-Match` naming the current ETag is 304 Not Modified (s3s-fs
//!     ignores the header and sends the body);
//!   - HEAD or GET of a key that is a directory on disk (`tree` when `tree/a` exists) is
//!     404 NoSuchKey (s3s-fs: 500, which rclone retries for seconds).
//! - A GET's body is read from its file 256 KiB at a time (s3s-fs: 4 KiB, one read and
//!   one socket write each). Real S3 spends none of our cores; the stand-in sharing them
//!   with N clients should spend as few as it can.
//! - With `--get-rate N`, at most N GETs and HEADs a second, LISTs included (a token
//!   bucket holding one second's worth) are served; the rest are answered 503 SlowDown, as S3 answers a
//!   prefix asked for more than its partition serves (5,500 a second).
//! - With `--conn-rate MBPS`, each connection sends at most MBPS megabytes (10^6 bytes) a
//!   second (a token bucket holding 10 ms worth, at least 64 KiB, spent in writes of at
//!   least 64 KiB), as S3 serves one
//!   connection at about 85-100 MB/s and scales with connections: what a benchmark on
//!   loopback must model for parallel ranged GETs to show what they win. Default: off.
//! - A GET with `If-Match` naming another ETag than the current one is 412
//!   PreconditionFailed (s3s-fs ignores the header), as S3 answers a ranged GET pinned to
//!   an object that has since been replaced.
//! - One line per request on stdout (`METHOD PATH STATUS LENGTH`, and ` RANGE` when the
//!   request asked for one), which the benchmarks count, as they count moto's request log.
//!
//! Usage: `bench-s3 ADDR ROOT ACCESS_KEY SECRET_KEY [--get-rate N] [--conn-rate MBPS]`
//! (ADDR on loopback, e.g. 127.0.0.1:9000).

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::Request;
use hyper::body::Incoming;
use hyper::service::{Service, service_fn};
use hyper_util::rt::TokioIo;
use s3s::auth::SimpleAuth;
use s3s::dto::*;
use s3s::service::{S3Service, S3ServiceBuilder};
use s3s::{HttpResponse, S3, S3Request, S3Response, S3Result, s3_error};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: bench-s3 ADDR ROOT ACCESS_KEY SECRET_KEY [--get-rate N] [--conn-rate MBPS]";
    let [addr, root, access_key, secret_key, flags @ ..] = args.as_slice() else {
        return Err(usage.into());
    };
    let (mut rate, mut conn_rate) = (None, None);
    for pair in flags.chunks(2) {
        let n: f64 = match pair {
            [_, n] => n.parse().map_err(|_| usage)?,
            _ => return Err(usage.into()),
        };
        match pair[0].as_str() {
            "--get-rate" if n.is_finite() && n >= 1.0 => rate = Some(n),
            "--get-rate" => return Err("--get-rate: at least 1 a second".into()),
            "--conn-rate" if n.is_finite() && n > 0.0 => conn_rate = Some(n * 1e6),
            "--conn-rate" => return Err("--conn-rate: more than 0 MB/s".into()),
            _ => return Err(usage.into()),
        }
    }
    let limit = Arc::new(rate.map(Limit::new));
    let service = {
        let fs = s3s_fs::FileSystem::new(root).map_err(|e| format!("{root}: {e:?}"))?;
        let mut builder = S3ServiceBuilder::new(Store {
            fs,
            root: PathBuf::from(root),
            etags: Mutex::default(),
        });
        builder.set_auth(SimpleAuth::from_single(
            access_key.as_str(),
            secret_key.as_str(),
        ));
        builder.build()
    };
    let listener = TcpListener::bind(addr.as_str()).await?;
    loop {
        let (socket, _) = listener.accept().await?;
        socket.set_nodelay(true)?;
        let service = service.clone();
        let limit = limit.clone();
        let logged = service_fn(move |request| logged(service.clone(), limit.clone(), request));
        tokio::spawn(async move {
            let socket = Paced::new(socket, conn_rate);
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(socket), logged);
            if let Err(error) = connection.await {
                eprintln!("bench-s3: connection: {error}");
            }
        });
    }
}

/// Serves the request, then logs it with its status and body length (`GET /b/k 200 1234`,
/// or `ERR -`). A lost log line would miscount the benchmark, so it fails the request
/// instead.
async fn logged(
    service: S3Service,
    limit: Arc<Option<Limit>>,
    request: Request<Incoming>,
) -> Result<HttpResponse, BoxError> {
    let range = request
        .headers()
        .get("range")
        .and_then(|r| r.to_str().ok())
        .map(|r| format!(" {r}"))
        .unwrap_or_default();
    let line = format!("{} {}", request.method(), request.uri());
    let read = matches!(*request.method(), hyper::Method::GET | hyper::Method::HEAD);
    let answer = match limit.as_ref() {
        Some(limit) if read && !limit.take() => Ok(slow_down()),
        _ => Service::call(&service, request).await,
    };
    let status = match &answer {
        Ok(response) => {
            let length = response
                .headers()
                .get("content-length")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            format!("{} {length}", response.status().as_u16())
        }
        Err(_) => "ERR -".to_string(),
    };
    std::io::stdout()
        .lock()
        .write_all(format!("{line} {status}{range}\n").as_bytes())?;
    answer.map_err(|e| format!("{e:?}").into())
}

/// A connection whose writes go at most `rate` bytes a second (when given): a token bucket
/// holding 10 ms worth (at least 64 KiB), refilled as time passes; a write finding less
/// than 64 KiB in it (or than the buffer, if shorter) waits until there is.
struct Paced<T> {
    inner: T,
    rate: Option<f64>,
    tokens: f64,
    at: Instant,
    wait: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> Paced<T> {
    fn new(inner: T, rate: Option<f64>) -> Paced<T> {
        Paced {
            inner,
            rate,
            tokens: 0.0,
            at: Instant::now(),
            wait: None,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Paced<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Paced<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let Some(rate) = self.rate else {
            return Pin::new(&mut self.inner).poll_write(cx, buf);
        };
        let burst = (rate / 100.0).max(64.0 * 1024.0);
        loop {
            if let Some(wait) = self.wait.as_mut() {
                std::task::ready!(wait.as_mut().poll(cx));
                self.wait = None;
            }
            let now = Instant::now();
            let refill = now.duration_since(self.at).as_secs_f64() * rate;
            self.tokens = (self.tokens + refill).min(burst);
            self.at = now;
            // Writes of at least 64 KiB (or the whole buffer), as a server sends full
            // segments: a pacer that let a write through per KiB would have the client
            // read 1 KiB chunks, and charge it CPU that S3 never would.
            let quantum = (64.0 * 1024.0_f64).min(buf.len() as f64);
            if self.tokens >= quantum {
                break;
            }
            let short = (quantum - self.tokens) / rate;
            let until = tokio::time::Instant::now() + Duration::from_secs_f64(short);
            self.wait = Some(Box::pin(tokio::time::sleep_until(until)));
        }
        let allowed = (self.tokens as usize).min(buf.len());
        let written = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, &buf[..allowed]))?;
        self.tokens -= written as f64;
        Poll::Ready(Ok(written))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A token bucket: `rate` a second, holding at most one second's worth.
struct Limit {
    rate: f64,
    /// Tokens left, and when they were counted.
    bucket: Mutex<(f64, Instant)>,
}

impl Limit {
    fn new(rate: f64) -> Limit {
        Limit {
            rate,
            bucket: Mutex::new((rate, Instant::now())),
        }
    }

    fn take(&self) -> bool {
        let mut bucket = self.bucket.lock().unwrap();
        let now = Instant::now();
        let tokens =
            (bucket.0 + now.duration_since(bucket.1).as_secs_f64() * self.rate).min(self.rate);
        let served = tokens >= 1.0;
        *bucket = (if served { tokens - 1.0 } else { tokens }, now);
        served
    }
}

/// S3's answer to a prefix asked for more than it serves.
fn slow_down() -> HttpResponse {
    let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>\
               <Message>Please reduce your request rate.</Message></Error>";
    let mut response = HttpResponse::new(s3s::Body::from(xml.to_string()));
    *response.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
    let headers = response.headers_mut();
    headers.insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/xml"),
    );
    headers.insert(
        "content-length",
        hyper::header::HeaderValue::from(xml.len()),
    );
    response
}

/// s3s-fs's store, with S3's answers where s3s-fs's differ.
struct Store {
    fs: s3s_fs::FileSystem,
    root: PathBuf,
    /// (bucket, key) → ETag, from PUT answers; emptied by any other write.
    etags: Mutex<HashMap<(String, String), ETag>>,
}

impl Store {
    fn no_such_key(&self, bucket: &str, key: &str) -> S3Result<()> {
        match self.root.join(bucket).join(key).is_dir() {
            true => Err(s3_error!(NoSuchKey)),
            false => Ok(()),
        }
    }

    /// The object's ETag: as its PUT answered, else as s3s-fs keeps it (a HEAD).
    async fn etag(&self, bucket: &str, key: &str) -> S3Result<Option<ETag>> {
        let id = (bucket.to_string(), key.to_string());
        if let Some(etag) = self.etags.lock().unwrap().get(&id) {
            return Ok(Some(etag.clone()));
        }
        let input = HeadObjectInput::builder()
            .bucket(bucket.into())
            .key(key.into())
            .build()
            .map_err(|e| s3_error!(InternalError, "{e}"))?;
        let head = S3Request {
            input,
            method: hyper::Method::HEAD,
            uri: hyper::Uri::default(),
            headers: hyper::HeaderMap::new(),
            extensions: hyper::http::Extensions::new(),
            credentials: None,
            region: None,
            service: None,
            trailing_headers: None,
        };
        Ok(self.fs.head_object(head).await?.output.e_tag)
    }
}

/// An empty delimiter is no delimiter, as in S3.
fn no_empty_delimiter(mut input: ListObjectsV2Input) -> ListObjectsV2Input {
    input.delimiter = input.delimiter.filter(|d| !d.is_empty());
    input
}

/// `impl S3 for Store`: the given methods, and the rest of what s3s-fs implements passed
/// through unchanged (a macro around the whole impl, so that async_trait sees every method).
macro_rules! store_impl {
    (
        { $($own:item)* }
        delegate { $($op:ident: $input:ty => $output:ty;)* }
        delegate_and_forget_etags { $($write:ident: $winput:ty => $woutput:ty;)* }
    ) => {
        #[async_trait::async_trait]
        impl S3 for Store {
            $($own)*
            $(async fn $op(&self, req: S3Request<$input>) -> S3Result<S3Response<$output>> {
                self.fs.$op(req).await
            })*
            $(async fn $write(&self, req: S3Request<$winput>) -> S3Result<S3Response<$woutput>> {
                self.etags.lock().unwrap().clear();
                self.fs.$write(req).await
            })*
        }
    };
}

store_impl! {
    {
        async fn head_object(
            &self,
            req: S3Request<HeadObjectInput>,
        ) -> S3Result<S3Response<HeadObjectOutput>> {
            self.no_such_key(&req.input.bucket, &req.input.key)?;
            self.fs.head_object(req).await
        }

        async fn get_object(
            &self,
            req: S3Request<GetObjectInput>,
        ) -> S3Result<S3Response<GetObjectOutput>> {
            self.no_such_key(&req.input.bucket, &req.input.key)?;
            if let Some(condition) = &req.input.if_none_match {
                let current = self.etag(&req.input.bucket, &req.input.key).await?;
                let matches = match condition.as_etag() {
                    None => current.is_some(),
                    Some(asked) => current.is_some_and(|c| c.value() == asked.value()),
                };
                if matches {
                    return Err(s3_error!(NotModified));
                }
            }
            if let Some(condition) = &req.input.if_match {
                let current = self.etag(&req.input.bucket, &req.input.key).await?;
                let matches = match condition.as_etag() {
                    None => current.is_some(),
                    Some(asked) => current.is_some_and(|c| c.value() == asked.value()),
                };
                if !matches {
                    return Err(s3_error!(PreconditionFailed));
                }
            }
            let path = self.root.join(&req.input.bucket).join(&req.input.key);
            let mut answer = self.fs.get_object(req).await?;
            // The same bytes s3s-fs would send, read 256 KiB at a time.
            let length = answer.output.content_length.unwrap_or(0) as u64;
            let start = answer
                .output
                .content_range
                .as_deref()
                .and_then(|r| r.strip_prefix("bytes "))
                .and_then(|r| r.split('-').next())
                .and_then(|first| first.parse::<u64>().ok())
                .unwrap_or(0);
            let mut file = tokio::fs::File::open(&path).await.map_err(|e| s3_error!(e, NoSuchKey))?;
            file.seek(std::io::SeekFrom::Start(start))
                .await
                .map_err(|e| s3_error!(e, InternalError))?;
            let body = tokio_util::io::ReaderStream::with_capacity(file.take(length), 256 * 1024);
            answer.output.body = Some(StreamingBlob::wrap(body));
            Ok(answer)
        }

        async fn put_object(
            &self,
            req: S3Request<PutObjectInput>,
        ) -> S3Result<S3Response<PutObjectOutput>> {
            let id = (req.input.bucket.clone(), req.input.key.clone());
            self.etags.lock().unwrap().remove(&id);
            let answer = self.fs.put_object(req).await?;
            if let Some(etag) = &answer.output.e_tag {
                self.etags.lock().unwrap().insert(id, etag.clone());
            }
            Ok(answer)
        }

        async fn list_objects_v2(
            &self,
            req: S3Request<ListObjectsV2Input>,
        ) -> S3Result<S3Response<ListObjectsV2Output>> {
            let bucket = req.input.bucket.clone();
            let mut answer = self.fs.list_objects_v2(req.map_input(no_empty_delimiter)).await?;
            for object in answer.output.contents.iter_mut().flatten() {
                if let (None, Some(key)) = (&object.e_tag, &object.key) {
                    object.e_tag = self.etag(&bucket, key).await?;
                }
            }
            Ok(answer)
        }

        /// As s3s-fs answers ListObjects (v1): through ListObjectsV2, here with ETags.
        async fn list_objects(
            &self,
            req: S3Request<ListObjectsInput>,
        ) -> S3Result<S3Response<ListObjectsOutput>> {
            let v2 = self.list_objects_v2(req.map_input(Into::into)).await?;
            Ok(v2.map_output(|v2| ListObjectsOutput {
                contents: v2.contents,
                common_prefixes: v2.common_prefixes,
                delimiter: v2.delimiter,
                encoding_type: v2.encoding_type,
                name: v2.name,
                prefix: v2.prefix,
                max_keys: v2.max_keys,
                is_truncated: v2.is_truncated,
                next_marker: v2.next_continuation_token,
                ..Default::default()
            }))
        }
    }
    delegate {
        create_bucket: CreateBucketInput => CreateBucketOutput;
        get_bucket_location: GetBucketLocationInput => GetBucketLocationOutput;
        head_bucket: HeadBucketInput => HeadBucketOutput;
        list_buckets: ListBucketsInput => ListBucketsOutput;
        create_multipart_upload: CreateMultipartUploadInput => CreateMultipartUploadOutput;
        upload_part: UploadPartInput => UploadPartOutput;
        upload_part_copy: UploadPartCopyInput => UploadPartCopyOutput;
        list_parts: ListPartsInput => ListPartsOutput;
        abort_multipart_upload: AbortMultipartUploadInput => AbortMultipartUploadOutput;
    }
    delegate_and_forget_etags {
        copy_object: CopyObjectInput => CopyObjectOutput;
        delete_bucket: DeleteBucketInput => DeleteBucketOutput;
        delete_object: DeleteObjectInput => DeleteObjectOutput;
        delete_objects: DeleteObjectsInput => DeleteObjectsOutput;
        complete_multipart_upload: CompleteMultipartUploadInput => CompleteMultipartUploadOutput;
    }
}
