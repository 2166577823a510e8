//! `imds-emulator`: the IMDS emulator as a process, for the demo, the benchmark and the
//! systemd boot test. Prints `listening on URL` once it accepts connections, then serves
//! until SIGINT or SIGTERM.
//!
//! Usage: imds-emulator [--listen 127.0.0.1:PORT] [--config SCENARIO.json]
//!                      [--user-data-file PATH] [--user-data-after DURATION]
//!                      [--flavor aws|gcp|azure|openstack]
//!
//! `--flavor gcp` serves Compute Engine's metadata server instead of EC2's IMDS (the
//! user-data as the instance attribute `bootstage`), `--flavor azure` Azure's Instance
//! Metadata Service (the user-data as `compute/userData`, base64), `--flavor openstack`
//! Nova's metadata service (`/openstack/latest/user_data`); see the library's
//! documentation.
//!
//! The scenario is `imds_emulator::Config` as JSON, its `timeline` included (e.g.
//! `{"timeline": [{"after": "2s", "path": "spot/instance-action", "value": "…"}]}`); a
//! timeline path that cannot be set is an error at the start (exit status 2).

use std::io::Write;
use std::net::SocketAddr;

use imds_emulator::{Config, Emulator};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("imds-emulator: {e}");
        std::process::exit(2);
    }
}

async fn run() -> Result<(), String> {
    let mut listen: SocketAddr = "127.0.0.1:0".parse().expect("valid address");
    let mut config = Config::default();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => listen = value()?.parse().map_err(|e| format!("--listen: {e}"))?,
            "--config" => {
                let path = value()?;
                let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
                config = serde_json::from_str(&text).map_err(|e| format!("{path}: {e}"))?;
            }
            "--user-data-file" => {
                let path = value()?;
                let data = std::fs::read(&path).map_err(|e| format!("{path}: {e}"))?;
                config.user_data = Some(data);
            }
            "--user-data-after" => {
                config.user_data_after = Some(
                    humantime::parse_duration(&value()?)
                        .map_err(|e| format!("--user-data-after: {e}"))?,
                )
            }
            "--flavor" => {
                config.flavor = match value()?.as_str() {
                    "aws" => imds_emulator::Flavor::Aws,
                    "gcp" => imds_emulator::Flavor::Gcp,
                    "azure" => imds_emulator::Flavor::Azure,
                    "openstack" => imds_emulator::Flavor::OpenStack,
                    other => {
                        return Err(format!(
                            "--flavor {other:?}: expected aws, gcp, azure or openstack"
                        ));
                    }
                }
            }
            "-h" | "--help" => {
                println!(
                    "usage: imds-emulator [--listen 127.0.0.1:PORT] [--config FILE] [--user-data-file PATH] [--user-data-after DURATION] [--flavor aws|gcp|azure|openstack]"
                );
                return Ok(());
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let emulator = Emulator::bind(listen, config)
        .await
        .map_err(|e| e.to_string())?;
    println!("listening on {}", emulator.url());
    let _ = std::io::stdout().flush();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}
