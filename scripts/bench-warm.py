#!/usr/bin/env python3
"""Benchmark of leaving a warm pool: the time from IMDS's target lifecycle state switching
to InService to the app's exec, with an unchanged bundle and 10 SSM secret references,
against moto's server and the project's IMDS emulator on 127.0.0.1 only.

Each run boots a fresh state dir through metadata, s3-sync and hooks with the state at
Warmed:Running, starts `bootstage launch -- APP` (which waits in the pool), switches the
state after a random 0–5 s (so no poll phase is favoured), and reads the app's own stamp.
Reported per poll interval (the default 2 s, and AWS's examples' 5 s): p50 and max of the
delay, its excess over the poll interval (the goal: p50 ≤ 1 s over it), and what going
into service asked of S3 (the bundle's conditional GET: 304, no body) and SSM.

No auto scaling group here: the CONTINUE of leaving the pool is one more call, made before
READY and the app (tests/it/warm.rs and boot_warm.rs prove it; the lifecycle emulator is
not part of this timing).

Usage: scripts/bench-warm.py [--runs N]. Prints a Markdown table; with the default runs it
rewrites the warm-pool section of BENCHMARKS.md.
"""
import argparse, base64, io, json, os, random, statistics, subprocess, sys, tarfile, time, urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

DEFAULT_RUNS = 10
STATE = "autoscaling/target-lifecycle-state"


def http(method, url, body=None):
    assert url.startswith("http://127.0.0.1:"), url
    req = urllib.request.Request(url, data=body, method=method)
    with urllib.request.urlopen(req, timeout=5) as r:
        return r.read()


def bundle():
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for i in range(50):
            data = (f"file {i}\n" * 200).encode()
            info = tarfile.TarInfo(f"app/f{i:03}.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS)
    args = parser.parse_args()
    import boto3  # moto's own dependency

    with benchlib.scratch() as work:
        work = Path(work)
        moto = benchlib.Moto(work)
        env = benchlib.env_for(moto)
        kw = dict(endpoint_url=moto.url, region_name="us-east-1",
                  aws_access_key_id=benchlib.ACCESS_KEY, aws_secret_access_key=benchlib.SECRET_KEY)
        ssm, s3 = boto3.client("ssm", **kw), boto3.client("s3", **kw)
        for i in range(10):
            ssm.put_parameter(Name=f"/bench/warm/s{i}", Value=f"secret-{i}", Type="SecureString", Overwrite=True)
        s3.create_bucket(Bucket="warm-bench")
        s3.put_object(Bucket="warm-bench", Key="code/app.tar.gz", Body=bundle())
        dest = work / "code"
        params = {f"S{i}": {"ssm": f"/bench/warm/s{i}"} for i in range(10)}
        params["bootstage"] = {"sync": [{"from": "s3://warm-bench/code/app.tar.gz", "to": str(dest)}]}
        config = work / "imds.json"
        config.write_text(json.dumps({
            "user_data": base64.b64encode(json.dumps(params).encode()).decode(),
            "target_lifecycle_state": "Warmed:Running",
            "instance": {"region": "us-east-1"},
        }))
        imds = subprocess.Popen([str(benchlib.RELEASE / "imds-emulator"), "--listen", "127.0.0.1:0", "--config", str(config)],
                                stdout=subprocess.PIPE, text=True)
        url = imds.stdout.readline().split()[-1]
        env = dict(env, AWS_EC2_METADATA_SERVICE_ENDPOINT=url, BOOTSTAGE_HOOKS_DIR=str(work / "hooks"),
                   BOOTSTAGE_LIB_DIR=str(work / "lib"), BOOTSTAGE_NOTIFY_CONFIG=str(work / "none.json"),
                   BOOTSTAGE_LIFECYCLE_CONFIG=str(work / "none.json"))
        env.pop("AWS_EC2_METADATA_DISABLED")
        (work / "hooks" / "per-start.d").mkdir(parents=True)
        rows = []
        try:
            for poll in ["2s", "5s"]:
                delays, gets, not_modified = [], 0, 0
                for run in range(args.runs):
                    state = work / f"state-{poll}-{run}"
                    http("PUT", f"{url}/_emulator/meta-data/{STATE}", b"Warmed:Running")
                    for stage in (["metadata"], ["s3-sync"], ["hooks"]):
                        subprocess.run([str(benchlib.BIN), "--state-dir", str(state), *stage], env=env, check=True,
                                       stdout=subprocess.DEVNULL)
                    stamp = work / "app-started"
                    stamp.unlink(missing_ok=True)
                    launch = subprocess.Popen(
                        [str(benchlib.BIN), "--state-dir", str(state), "launch", "--warm-poll", poll, "--",
                         "/bin/sh", "-c", f"date +%s%N > {stamp}"], env=env)
                    while not (state / "in-service.json").exists():
                        time.sleep(0.01)
                    time.sleep(random.uniform(0, 5))
                    before = len(moto.requests())
                    http("PUT", f"{url}/_emulator/meta-data/{STATE}", b"InService")
                    changed = json.loads(http("GET", f"{url}/_emulator/changes"))[-1]["unix"]
                    assert launch.wait(timeout=60) == 0
                    delays.append(int(stamp.read_text()) / 1e9 - changed)
                    for line in moto.requests()[before:]:
                        if "app.tar.gz" in line and '"GET ' in line:
                            gets += 1
                            not_modified += '" 304 ' in line
                seconds = float(poll[:-1])
                p50, worst = statistics.median(delays), max(delays)
                rows.append(f"| {poll} | {args.runs} | {p50:.2f} s | {worst:.2f} s | {p50 - seconds:+.2f} s | "
                            f"{gets} ({not_modified} × 304) |")
        finally:
            imds.kill()
            moto.stop()
    table = "\n".join([
        f"Leaving a warm pool (`{STATE}` Warmed:Running → InService) to the app's exec: metadata again "
        "(10 SSM references), the bundle's conditional GET, per-start.d (empty), then `launch` execs the app. "
        "`scripts/bench-warm.py`, moto and the IMDS emulator on loopback; the switch at a random 0–5 s.",
        "",
        "| poll | runs | p50 | max | p50 − poll | bundle GETs |",
        "|---|---|---|---|---|---|",
        *rows,
    ])
    print(table)
    if args.runs == DEFAULT_RUNS:
        benchlib.write_section("warm", "Leaving a warm pool", table)


if __name__ == "__main__":
    main()
