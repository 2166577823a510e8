#!/usr/bin/env python3
"""Benchmark of noticing a drain: the time from IMDS's target lifecycle state switching to
Terminated to the first drain.d hook's start, at the watcher's default 5 s poll, and the
IMDS request rate of a watcher that waits, against the project's IMDS emulator on
127.0.0.1 only (the release build: CARGO_TARGET_DIR/release, e.g. /work/rel-target).

Each run: a fresh state dir through `bootstage metadata`, then `bootstage lifecycle watch`
(no --poll-every: the shipped 5 s) with a drain.d hook that stamps its start; once the
watcher has looked at IMDS, the state switches to Terminated after a random 0-5 s (so no
poll phase is favoured); the delay is the hook's stamp less the emulator's logged time of
the change. No auto scaling group: nothing to complete, so the watcher exits after the
drain (the completion is a later call; tests/it/drain.rs proves it).

The rate: one watcher left alone for --idle seconds (600 by default; --idle 3600 for the
hour the issue names: the poll is a fixed interval, so the rate does not depend on the
length), every request the emulator logged in that window (token PUTs included), per
second. Beside it, the node termination handler's IMDS mode: each enabled monitor
(Spot ITN, scheduled events, rebalance) polls every 2 s (`time.Tick(time.Second * 2)` in
cmd/node-termination-handler.go of aws/aws-node-termination-handler), one GET each.

Usage: scripts/bench-drain.py [--runs N] [--idle SECONDS]. Prints a Markdown table; with
the default runs it rewrites the drain section of BENCHMARKS.md.
"""
import argparse, base64, json, os, random, statistics, subprocess, sys, time, urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

DEFAULT_RUNS = 20
DEFAULT_IDLE = 600
STATE = "autoscaling/target-lifecycle-state"
TARGET_GET = "/latest/meta-data/" + STATE


def http(method, url, body=None):
    assert url.startswith("http://127.0.0.1:"), url
    req = urllib.request.Request(url, data=body, method=method)
    with urllib.request.urlopen(req, timeout=5) as r:
        return r.read()


def requests(url):
    return json.loads(http("GET", f"{url}/_emulator/requests"))


def hook(path, script):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS)
    parser.add_argument("--idle", type=int, default=DEFAULT_IDLE)
    args = parser.parse_args()
    for binary in (benchlib.BIN, benchlib.RELEASE / "imds-emulator"):
        assert binary.exists(), f"{binary}: build it with cargo build --release (CARGO_TARGET_DIR)"

    with benchlib.scratch() as work:
        work = Path(work)
        params = {"bootstage": {"lifecycle": {"drain": {"within": "60s"}}}}
        config = work / "imds.json"
        config.write_text(json.dumps({
            "user_data": base64.b64encode(json.dumps(params).encode()).decode(),
            "target_lifecycle_state": "InService",
            "instance": {"region": "us-east-1"},
        }))
        imds = subprocess.Popen([str(benchlib.RELEASE / "imds-emulator"), "--listen", "127.0.0.1:0",
                                 "--config", str(config)], stdout=subprocess.PIPE, text=True)
        url = imds.stdout.readline().split()[-1]
        stamp = work / "drain-started"
        hooks = work / "hooks"
        hook(hooks / "drain.d" / "10-stamp", f"date +%s%N > {stamp}")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            **benchlib.LOOPBACK_ONLY,
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": url,
            "BOOTSTAGE_HOOKS_DIR": str(hooks),
            "BOOTSTAGE_LIB_DIR": str(work / "lib"),
            "BOOTSTAGE_NOTIFY_CONFIG": str(work / "none.json"),
            "BOOTSTAGE_LIFECYCLE_CONFIG": str(work / "none.json"),
            "BOOTSTAGE_LOG": "warn",
        }

        def watcher(state):
            subprocess.run([str(benchlib.BIN), "--state-dir", str(state), "metadata"], env=env, check=True,
                           stdout=subprocess.DEVNULL)
            return subprocess.Popen([str(benchlib.BIN), "--state-dir", str(state), "lifecycle", "watch"], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def polls():
            return sum(1 for r in requests(url) if r["path"] == TARGET_GET)

        delays = []
        try:
            for run in range(args.runs):
                http("PUT", f"{url}/_emulator/meta-data/{STATE}", b"InService")
                stamp.unlink(missing_ok=True)
                before = polls()
                watch = watcher(work / f"state-{run}")
                while polls() <= before:
                    time.sleep(0.01)
                time.sleep(random.uniform(0, 5))
                http("PUT", f"{url}/_emulator/meta-data/{STATE}", b"Terminated")
                changed = json.loads(http("GET", f"{url}/_emulator/changes"))[-1]["unix"]
                assert watch.wait(timeout=120) == 0
                delays.append(int(stamp.read_text()) / 1e9 - changed)

            # The rate of a watcher that waits: every request in a window after its start.
            http("PUT", f"{url}/_emulator/meta-data/{STATE}", b"InService")
            http("DELETE", f"{url}/_emulator/requests")
            watch = watcher(work / "state-idle")
            time.sleep(2)
            start = len(requests(url))
            time.sleep(args.idle)
            window = requests(url)[start:]
            watch.terminate()
            watch.wait(timeout=30)
        finally:
            imds.kill()
    rate = len(window) / args.idle
    gets = sum(1 for r in window if r["method"] == "GET")
    puts = len(window) - gets
    p50, worst = statistics.median(delays), max(delays)
    table = "\n".join([
        f"Noticing a drain: `{STATE}` InService → Terminated to the first `drain.d` hook's start, with the shipped "
        "5 s poll (`bootstage lifecycle watch`, four GETs a look with one IMDSv2 token); the switch at a random "
        "0–5 s after the watcher's first look. `scripts/bench-drain.py`, the IMDS emulator on loopback. "
        "Goal: p50 ≤ 3 s, max ≤ 6 s, ≤ 1 IMDS request a second.",
        "",
        "| runs | p50 | max | min |",
        "|---|---|---|---|",
        f"| {args.runs} | {p50:.2f} s | {worst:.2f} s | {min(delays):.2f} s |",
        "",
        "| watcher | IMDS requests a second | what it asks |",
        "|---|---|---|",
        f"| bootstage, waiting {args.idle} s | {rate:.2f} ({gets} GETs, {puts} token PUTs) | target lifecycle state, "
        "Spot instance-action, rebalance, scheduled maintenance every 5 s |",
        "| node termination handler, IMDS mode (source: `time.Tick(time.Second * 2)` per monitor, "
        "cmd/node-termination-handler.go) | 1.5 with its three IMDS monitors on (0.5 per monitor) | Spot ITN, "
        "scheduled events, rebalance every 2 s |",
    ])
    print(table)
    if args.runs == DEFAULT_RUNS and args.idle == DEFAULT_IDLE:
        benchlib.write_section("drain", "Noticing a drain", table)


if __name__ == "__main__":
    main()
