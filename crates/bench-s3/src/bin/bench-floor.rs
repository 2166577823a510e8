//! The floor of `scripts/bench-sync.py` and `scripts/bench-bundle.py`: the server's own
//! pace. GETs every line read from stdin at the given concurrency and discards the bytes:
//! no listing, no files, no verification beyond what the SDK does by default. Whatever a
//! sync tool takes beyond this is the tool's own. A line is a key, or a key, a space and
//! an HTTP range (`bundle/app.tar.zst bytes=0-8388607`: one part of a ranged download).
//!
//! Usage: `bench-floor ENDPOINT BUCKET CONCURRENCY ACCESS_KEY SECRET_KEY < lines`
//! (ENDPOINT on loopback). Prints `<GETs> <bytes>`.

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use futures_util::StreamExt;
use std::io::BufRead;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    let [_, endpoint, bucket, concurrency, access, secret] = &args[..] else {
        return Err(
            "usage: bench-floor ENDPOINT BUCKET CONCURRENCY ACCESS_KEY SECRET_KEY < keys".into(),
        );
    };
    if !endpoint.starts_with("http://127.0.0.1:") && !endpoint.starts_with("http://[::1]:") {
        return Err("bench-floor only talks to a server on loopback".into());
    }
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(Credentials::new(access, secret, None, None, "bench"))
        .build();
    let client = aws_sdk_s3::Client::from_conf(config);
    let keys: Vec<String> = std::io::stdin().lock().lines().collect::<Result<_, _>>()?;
    let concurrency: usize = concurrency.parse()?;
    let gets = futures_util::stream::iter(keys.iter().map(|key| {
        let client = &client;
        async move {
            let (key, range) = match key.split_once(' ') {
                Some((key, range)) => (key, Some(range.to_string())),
                None => (key.as_str(), None),
            };
            let answer = client
                .get_object()
                .bucket(bucket)
                .key(key)
                .set_range(range)
                .send()
                .await?;
            let mut body = answer.body;
            let mut bytes = 0u64;
            while let Some(chunk) = body.next().await {
                bytes += chunk?.len() as u64;
            }
            Ok::<u64, BoxError>(bytes)
        }
    }))
    .buffer_unordered(concurrency);
    let results: Vec<Result<u64, BoxError>> = gets.collect().await;
    let mut total = 0;
    for result in results {
        total += result?;
    }
    println!("{} {total}", keys.len());
    Ok(())
}
