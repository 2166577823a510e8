#!/usr/bin/env python3
"""Watch-mode benchmark: how soon a change reaches an instance, woken by SQS or polling.

Against moto on 127.0.0.1 (it serves S3, SQS and S3's event notifications to SQS), two
watchers of the same prefix run side by side, each its own "instance" (state dir and
destination): one with `--sqs` and a 10-minute interval (only the queue can wake it), one
polling every 60 s, as `--watch 60s` does today. Twenty changes (a new object each) land
3 s apart; each watcher's --on-change hook logs the time and the files it has, so each
change's latency is the first hook run that has it minus the PUT's time. Reported: median
and largest latency per watcher (with 20 samples a p99 is the largest), and requests per
hour of an idle instance twice: sampled (each watcher alone for 60 s, its requests in
moto's log, times 60), and computed from the settings (3600 / interval LISTs, plus one
20 s long poll after another), since a 60 s sample can never contain a 10-minute LIST.

moto delivers an S3 event notification inside the PUT; AWS documents delivery as
"typically seconds, sometimes a minute or longer". The SQS latency here is bootstage's own
share (receive, pass, swap, hook), not what an instance on AWS will see.

Usage: scripts/bench-watch.py [--changes N]
Writes the watch section of BENCHMARKS.md (only with at least the default 20 changes).
"""
import argparse, os, subprocess, sys, tempfile, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
from benchlib import BIN, ROOT, Moto, env_for  # noqa: E402


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def watcher(name, work, env, extra):
    dest, log = work / name / "dest", work / name / "hook.log"
    (work / name).mkdir()
    hook = f'echo "$(date +%s.%N) $(ls {dest} | tr "\\n" " ")" >> {log}'
    argv = [str(BIN), "--state-dir", str(work / name / "state"), "s3-sync", "--from", "s3://bench/w/",
            "--to", str(dest), "--on-change", hook, *extra]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=open(work / name / "log", "w"))
    for _ in range(400):
        if (dest / "c-start").exists():
            return proc, log
        time.sleep(0.05)
    raise SystemExit(f"{name} did not sync")


def latencies(log, puts):
    """Per change: seconds from its PUT to the first hook run that has it."""
    runs = []
    for line in log.read_text().splitlines():
        stamp, *names = line.split()
        runs.append((float(stamp), set(names)))
    out = []
    for name, at in puts.items():
        seen = [t for t, names in runs if name in names]
        if not seen:
            raise SystemExit(f"{log}: {name} never arrived")
        out.append(min(seen) - at)
    return out


def idle_requests(server, seconds=60):
    before = len(server.requests())
    time.sleep(seconds)
    lines = server.requests()[before:]
    return sum('"POST / ' in l for l in lines), sum('"GET /bench' in l for l in lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--changes", type=int, default=20)
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "bootstage"], cwd=ROOT, check=True)
    import boto3
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        server = Moto(work)
        try:
            env = {**env_for(server), "BOOTSTAGE_LOG": "info"}
            kw = dict(endpoint_url=server.url, aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1")
            s3, sqs = boto3.client("s3", **kw), boto3.client("sqs", **kw)
            s3.create_bucket(Bucket="bench")
            s3.put_object(Bucket="bench", Key="w/c-start", Body=b"start")
            url = sqs.create_queue(QueueName="watch")["QueueUrl"]
            arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
            s3.put_bucket_notification_configuration(Bucket="bench", NotificationConfiguration={
                "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]})
            sqs_proc, sqs_log = watcher("sqs", work, env, ["--watch", "10m", "--sqs", url])
            poll_proc, poll_log = watcher("poll", work, env, ["--watch", "60s"])
            puts = {}
            for i in range(args.changes):
                name = f"c{i:02}"
                puts[name] = time.time()
                s3.put_object(Bucket="bench", Key=f"w/{name}", Body=name.encode())
                time.sleep(3)
            time.sleep(65)  # the polling watcher's next pass
            sqs_lat, poll_lat = latencies(sqs_log, puts), latencies(poll_log, puts)
            # Idle: each watcher alone.
            poll_proc.terminate(); poll_proc.wait()
            sqs_idle = idle_requests(server)
            sqs_proc.terminate(); sqs_proc.wait()
            time.sleep(21)  # moto logs its last long poll when that ends, 20 s on
            poll_proc, _ = watcher("poll-idle", work, env, ["--watch", "60s"])
            poll_idle = idle_requests(server)
            poll_proc.terminate(); poll_proc.wait()
        finally:
            server.stop()
    # name, latencies, sampled idle requests, interval (s), whether it long-polls SQS
    rows = [("SQS wake (`--sqs`, polling every 10 min as the net)", sqs_lat, sqs_idle, 600, True),
            ("polling every 60 s (`--watch 60s`)", poll_lat, poll_idle, 60, False)]
    lines = [
        f"moto on 127.0.0.1 (S3, SQS, S3 → SQS notifications); {os.cpu_count()} cores; {args.changes} changes (a new"
        " object each) 3 s apart, both watchers side by side. Latency: from the PUT to the --on-change hook run"
        " after the swap; moto delivers the S3 event inside the PUT, where AWS documents \"typically seconds,"
        " sometimes a minute or longer\": the SQS figure is bootstage's own share. Idle, sampled: each watcher"
        " alone for 60 s, its requests in moto's log, times 60 (no 10-minute LIST can fall in it); computed:"
        " 3600 / interval LISTs plus 180 long polls of 20 s.",
        "",
        "| watcher | latency median | max | idle requests per hour, sampled | idle requests per hour, computed |",
        "|---|---|---|---|---|",
    ]
    for name, lat, (posts, lists), interval, polls in rows:
        sampled = f"{(posts + lists) * 60} ({posts * 60} SQS receives, {lists * 60} LISTs)"
        receives, listed = (3600 // 20 if polls else 0), 3600 // interval
        computed = f"{receives + listed} ({receives} SQS receives, {listed} LISTs)"
        lines.append(f"| {name} | {pct(lat, 50):.2f} s | {max(lat):.2f} s | {sampled} | {computed} |")
    text = "\n".join(lines)
    print(text)
    if args.changes >= 20:
        benchlib.write_section("watch", "Watch mode: SQS wake vs polling (`scripts/bench-watch.py`)", text)


if __name__ == "__main__":
    main()
