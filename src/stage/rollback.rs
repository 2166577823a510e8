//! `bootstage rollback DEST [--to GENERATION] [--clear]` and `bootstage generations DEST`:
//! a synced destination's kept generations, listed, and a kept one swapped back in by
//! hand.
//!
//! A rollback swaps the link to the previous generation (or the one named) with one
//! rename (`sync::tree::Destination::roll_back`, which also records who asked and pins
//! the destination: the watcher keeps it there until the source holds a version other
//! than the one rolled back from), runs `--on-change`, and sends a `rollback` notice.
//! `--clear` ends the pin: the next pass swaps in what the source holds.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::base::child;
use crate::stage::error::Result;
use crate::stage::notice::deliver;
use crate::stage::s3sync::SyncError;
use crate::state::StateDir;
use crate::sync::tree::{self, Destination, Made};

#[derive(Debug, Clone)]
pub struct Settings {
    pub dest: PathBuf,
    /// A kept generation's name (`gen-…`), else the previous one.
    pub to: Option<String>,
    /// End a rollback's pin instead.
    pub clear: bool,
    /// Run after the swap (`/bin/sh -c`, `BOOTSTAGE_CHANGED=DEST`), as the watcher's.
    pub on_change: Option<String>,
    /// How long to wait for a sync of the destination to finish; bounds the hook too.
    pub timeout: Duration,
    /// The image's notify settings, when the parameters have none.
    pub notify: PathBuf,
}

#[derive(Debug, Clone)]
pub struct ListSettings {
    pub dest: PathBuf,
    pub json: bool,
    pub timeout: Duration,
}

async fn open(dest: &std::path::Path, wait: Duration) -> Result<Destination> {
    let path = dest.to_path_buf();
    let opened = tokio::task::spawn_blocking(move || Destination::open(&path, wait))
        .await
        .map_err(|e| SyncError::Settings(format!("destination lock task: {e}")))?;
    Ok(opened.map_err(SyncError::Tree)?)
}

pub async fn run(state: &StateDir, args: &Settings) -> Result<()> {
    let started = Instant::now();
    let mut dest = open(&args.dest, args.timeout).await?;
    let shown = args.dest.display().to_string();
    if args.clear {
        match dest.clear_pin().map_err(SyncError::Tree)? {
            true => println!(
                "{shown}: the rollback's pin is cleared; the next pass swaps in what the source holds"
            ),
            false => println!("{shown}: no rollback holds it"),
        }
        return Ok(());
    }
    let from = dest.current_made().cloned();
    let by = tree::who();
    let back = dest
        .roll_back(args.to.as_deref(), &by, true, None)
        .map_err(SyncError::Tree)?;
    let took = started.elapsed();
    // The lock goes before the hook: a sync waiting for it need not wait for the app too.
    drop(dest);
    tracing::info!(
        dest = shown,
        generation = back.name,
        source = back.source,
        by,
        ms = took.as_millis() as u64,
        "rolled back"
    );
    println!(
        "{shown}: rolled back to {} ({} {}), pinned until the source holds another version than {}",
        back.name,
        back.source,
        back.version,
        from.as_ref()
            .map_or("the one rolled back from", |m| m.version.as_str())
    );
    if let Some(hook) = &args.on_change {
        let mut command = tokio::process::Command::new("/bin/sh");
        command
            .arg("-c")
            .arg(hook)
            .env("BOOTSTAGE_CHANGED", &args.dest);
        match child::run_bounded(command, args.timeout).await {
            Ok(status) if status.success() => tracing::info!("--on-change hook done"),
            Ok(status) => tracing::error!("--on-change hook {}", child::describe(status)),
            Err(e) => tracing::error!("--on-change hook: {e}"),
        }
    }
    let about = json!({
        "dest": shown,
        "by": by,
        "from": from.as_ref().map(described),
        "running": described(&back),
    });
    if let Err(e) = deliver::life(state, &args.notify, "rollback", about, None).await {
        tracing::warn!("the rollback notice: {e}");
    }
    Ok(())
}

fn described(m: &Made) -> serde_json::Value {
    json!({"generation": m.name, "source": m.source, "version": m.version, "time": m.time})
}

pub async fn generations(args: &ListSettings) -> Result<()> {
    let dest = open(&args.dest, args.timeout).await?;
    let list = dest.list();
    let pin = dest.record().pin.clone();
    if args.json {
        let generations: Vec<serde_json::Value> = list
            .iter()
            .map(|(m, state)| {
                json!({
                    "generation": m.name,
                    "state": state,
                    "source": m.source,
                    "version": m.version,
                    "sha256": m.sha256,
                    "time": m.time,
                    "failed": m.failed,
                    "rolled_back": m.rolled_back,
                    "unverified": m.unverified,
                })
            })
            .collect();
        let out = json!({"dest": args.dest, "generations": generations, "pin": pin});
        println!(
            "{}",
            serde_json::to_string_pretty(&out).expect("serializes")
        );
        return Ok(());
    }
    println!(
        "{:<28} {:<12} {:<25} {:<36} SOURCE",
        "GENERATION", "STATE", "TIME", "VERSION"
    );
    for (m, state) in list.iter().rev() {
        let state = serde_json::to_value(state).expect("serializes");
        println!(
            "{:<28} {:<12} {:<25} {:<36} {}",
            m.name,
            state.as_str().unwrap_or_default(),
            m.time,
            m.version,
            m.source
        );
    }
    if let Some(pin) = pin {
        println!(
            "pinned: rolled back to {} by {} at {}; {} {} is not swapped in again until the source changes (bootstage rollback {} --clear ends this)",
            pin.to,
            pin.by,
            pin.at,
            pin.from.source,
            pin.from.version,
            args.dest.display()
        );
    }
    Ok(())
}
