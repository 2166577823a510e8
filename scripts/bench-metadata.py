#!/usr/bin/env python3
"""Benchmark of the metadata stage, side by side with the curl loop an operator would write.

Runs against the project's IMDS emulator on 127.0.0.1 only. Two measurements:
1. Late user-data: user-data appears 2–3 s (at random, so no poll loop is favoured by
   its phase) after the client starts. Reported: delay from the moment it is available to
   READY=1 (bootstage) or to the end of the script (baseline), and the IMDS requests made
   in the first 2 s of waiting.
2. Ready IMDS: wall time and peak RSS of one complete run. Peak RSS comes from GNU time,
   a small parent, because a child forked from Python reports Python's own RSS.

Outputs go to a tmpfs directory, as /run/bootstage is one on a real boot. The notify
listener reads every datagram, BARRIER=1 included, as systemd does.

3. References (issue 11): user-data with 0, 10 and 100 SSM references, resolved against
   moto's server on 127.0.0.1. Reported: wall time from process start to exit (READY=1 is
   sent just before; user-data already there),
   its excess over no references, calls per API (bootstage's own count, and moto's
   request log as a check); beside it, what an operator's hook would do instead
   (`aws ssm get-parameters`, 10 names a call), and the server's floor (the same
   GetParameters calls from one warm boto3 client in one process, 4 at once as bootstage
   makes them).

Usage: scripts/bench-metadata.py [--runs N] [--only imds|references]. Prints Markdown
tables and rewrites the metadata sections of BENCHMARKS.md.
"""
import argparse, concurrent.futures, json, os, platform, random, re, socket, threading, statistics, subprocess, sys, tempfile, time, urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BIN = benchlib.RELEASE
# Fewer runs print their tables but leave BENCHMARKS.md alone.
DEFAULT_RUNS = 15
def _literal(value):
    """The example's parameters with each reference ({"ssm": …}) a literal: the IMDS rows time
    user-data's arrival, and the references rows below time the references."""
    if isinstance(value, dict):
        if set(value) == {"ssm"} or set(value) == {"secretsmanager"}:
            return "example-secret"
        return {k: _literal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_literal(v) for v in value]
    return value


USER_DATA = __import__("base64").b64encode(
    json.dumps(_literal(json.loads((ROOT / "examples" / "params.json").read_text()))).encode()
).decode()


def http(method, url, body=None):
    assert url.startswith("http://127.0.0.1:"), url
    req = urllib.request.Request(url, data=body, method=method)
    with urllib.request.urlopen(req, timeout=5) as r:
        return r.read()


class Emulator:
    def __init__(self):
        self.proc = subprocess.Popen([str(BIN / "imds-emulator"), "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE, text=True)
        self.url = self.proc.stdout.readline().split()[-1]

    def reset(self, user_data):
        http("DELETE", f"{self.url}/_emulator/requests")
        if user_data is None:
            http("DELETE", f"{self.url}/_emulator/user-data")
        else:
            http("PUT", f"{self.url}/_emulator/user-data", user_data.encode())

    def requests(self):
        return json.loads(http("GET", f"{self.url}/_emulator/requests"))

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def clients(emu, work):
    """(name, argv, uses sd_notify) for each contender."""
    return [
        ("bootstage", [str(BIN / "bootstage"), "--state-dir", f"{work}/state", "metadata", "--imds-endpoint", emu.url, "--timeout", "30s"], True),
        ("curl loop, sleep 1", ["sh", str(ROOT / "scripts/bench/curl-loop.sh"), emu.url, f"{work}/params.json", "1"], False),
        ("curl loop, sleep 0.1", ["sh", str(ROOT / "scripts/bench/curl-loop.sh"), emu.url, f"{work}/params.json", "0.1"], False),
    ]


def run_once(argv, notify, work, emu, appear_after):
    """Returns (available->done seconds or None, requests before availability, wall, maxrss KiB)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BOOTSTAGE_", "NOTIFY_"))}
    env.update(benchlib.LOOPBACK_ONLY, BOOTSTAGE_LOG="warn")
    sock = None
    if notify:
        path = f"{work}/notify.sock"
        if os.path.exists(path):
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        env["NOTIFY_SOCKET"] = path
    ready, listener = [], None
    if sock is not None:
        def listen():  # like systemd: read every datagram as it comes
            sock.settimeout(30)
            while True:
                msg = sock.recv(4096).decode(errors="replace").splitlines()
                if "READY=1" in msg:
                    ready.append(time.monotonic())
                if "BARRIER=1" in msg:
                    return
        listener = threading.Thread(target=listen)
        listener.start()
    rss_file = f"{work}/rss"
    start = time.monotonic()
    proc = subprocess.Popen(["/usr/bin/time", "-f", "%M", "-o", rss_file, *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    available = before = None
    if appear_after is not None:
        time.sleep(2.0)
        before = len(emu.requests())
        time.sleep(appear_after - 2.0)
        http("PUT", f"{emu.url}/_emulator/user-data", USER_DATA.encode())
        available = time.monotonic()
    status = proc.wait()
    if listener is not None:
        listener.join()
    done = ready[0] if ready else None
    end = time.monotonic()
    if sock is not None:
        sock.close()
    assert status == 0, argv
    done = done or end
    delay = None if available is None else done - available
    rss_kib = int(Path(rss_file).read_text().split()[-1])
    return delay, before, end - start, rss_kib


class Moto:
    """moto's server on 127.0.0.1, counting the requests it logs."""

    def __init__(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines = []
        started = threading.Event()

        def read():
            for line in self.proc.stderr:
                if "Running on" in line:
                    started.set()
                if '"POST / ' in line:
                    self.lines.append(line)
        threading.Thread(target=read, daemon=True).start()
        assert started.wait(60), "moto started"

    def env(self):
        return {"AWS_ENDPOINT_URL": self.url, "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "bench",
                "AWS_SECRET_ACCESS_KEY": "bench", "AWS_EC2_METADATA_DISABLED": "true",
                "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}

    def ssm(self):
        import boto3
        return boto3.client("ssm", endpoint_url=self.url, region_name="us-east-1",
                            aws_access_key_id="bench", aws_secret_access_key="bench")

    def count(self):
        time.sleep(0.3)  # moto logs a request after answering it
        return len(self.lines)

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def references(runs):
    """Rows for 0, 10 and 100 SSM references."""
    import base64
    moto = Moto()
    names = [f"/bench/p{i:03}" for i in range(100)]
    ssm = moto.ssm()
    for name in names:
        ssm.put_parameter(Name=name, Value=f"value of {name}", Type="SecureString")
    # examples/params.json's own reference (its database password).
    ssm.put_parameter(Name="/shop-web/staging/db-password", Value="example-secret", Type="SecureString")
    emu = Emulator()
    rows = []
    try:
        with tempfile.TemporaryDirectory(dir="/dev/shm") as work:
            base = json.loads((ROOT / "examples" / "params.json").read_text())
            for n in (0, 10, 100):
                params = dict(base, refs={f"p{i:03}": {"ssm": names[i]} for i in range(n)})
                emu.reset(base64.b64encode(json.dumps(params).encode()).decode())
                argv = [str(BIN / "bootstage"), "--state-dir", f"{work}/state", "metadata", "--imds-endpoint", emu.url, "--timeout", "30s"]
                env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BOOTSTAGE_", "NOTIFY_"))}
                env.update(moto.env(), **benchlib.LOOPBACK_ONLY, BOOTSTAGE_LOG="info")
                walls, calls, logged = [], None, []
                for _ in range(runs):
                    before = moto.count()
                    start = time.monotonic()
                    out = subprocess.run(argv, env=env, capture_output=True, text=True)
                    walls.append(time.monotonic() - start)
                    assert out.returncode == 0, out.stderr
                    logged.append(moto.count() - before)
                    found = re.search(r"get_parameters=(\d+) get_parameter=(\d+) get_parameters_by_path=(\d+) get_secret_value=(\d+)", out.stderr)
                    calls = tuple(int(x) for x in found.groups()) if found else (0, 0, 0, 0)
                # What an operator's hook would do: aws ssm get-parameters, 10 names a call.
                cli_walls = []
                for _ in range(max(1, runs // 3)):
                    start = time.monotonic()
                    for i in range(0, n, 10):
                        subprocess.run(["aws", "ssm", "get-parameters", "--with-decryption", "--names", *names[i:i + 10],
                                        "--endpoint-url", moto.url, "--region", "us-east-1", "--output", "json"],
                                       env=dict(env, AWS_CONFIG_FILE="/dev/null"), check=True, capture_output=True)
                    cli_walls.append(time.monotonic() - start)
                # The server's floor: the same calls from one warm client in one process, at
                # bootstage's concurrency (secrets::CONCURRENCY = 4 calls in flight).
                floors = []
                with concurrent.futures.ThreadPoolExecutor(4) as pool:
                    for _ in range(runs):
                        start = time.monotonic()
                        list(pool.map(lambda i: ssm.get_parameters(Names=names[i:i + 10], WithDecryption=True), range(0, n, 10)))
                        floors.append(time.monotonic() - start)
                rows.append({"refs": n, "wall": statistics.median(walls), "calls": calls,
                             "logged": statistics.median(logged), "cli": statistics.median(cli_walls),
                             "floor": statistics.median(floors)})
    finally:
        emu.stop()
        moto.stop()
    zero = rows[0]["wall"]
    lines = [
        f"Machine: {os.cpu_count()} cores, {platform.machine()}; {runs} runs per row (aws CLI: {max(1, runs // 3)}); IMDS emulator and moto on 127.0.0.1; SecureString parameters.",
        "",
        "| references | bootstage: process start → exit (READY is its last act), median | over 0 references | bootstage calls: GetParameters / GetParameter / ByPath / GetSecretValue | requests in moto's log | aws ssm get-parameters, 10 a call (the hook it replaces) | server floor: same calls, 4 at once (bootstage's concurrency), one warm boto3 client |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c = r["calls"]
        lines.append(f"| {r['refs']} | {r['wall'] * 1000:.0f} ms | +{(r['wall'] - zero) * 1000:.0f} ms | {c[0]} / {c[1]} / {c[2]} / {c[3]} | {r['logged']:.0f} | {r['cli'] * 1000:.0f} ms | {r['floor'] * 1000:.0f} ms |")
    table = "\n".join(lines)
    print(table)
    if runs >= DEFAULT_RUNS:
        benchlib.write_section("metadata-references", "metadata stage with SSM references (`scripts/bench-metadata.py`)", table)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=DEFAULT_RUNS)
    ap.add_argument("--only", choices=["imds", "references"])
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "bootstage", "-p", "imds-emulator"], cwd=ROOT, check=True)
    if args.only != "imds":
        references(args.runs)
    if args.only == "references":
        return
    emu = Emulator()
    rows = []
    try:
        rng = random.Random(1)
        with tempfile.TemporaryDirectory(dir="/dev/shm") as work:
            for name, argv, notify in clients(emu, work):
                late = []
                for _ in range(args.runs):
                    emu.reset(None)
                    late.append(run_once(argv, notify, work, emu, 2.0 + rng.random()))
                ready = []
                for _ in range(args.runs * 2):
                    emu.reset(USER_DATA)
                    ready.append(run_once(argv, notify, work, emu, None))
                delays = sorted(r[0] * 1000 for r in late)
                rows.append({
                    "client": name,
                    "delay_median_ms": statistics.median(delays),
                    "delay_max_ms": max(delays),
                    "requests_waiting": statistics.median(r[1] for r in late),
                    "wall_median_ms": statistics.median(r[2] * 1000 for r in ready),
                    "rss_max_mb": max(r[3] for r in ready) / 1024,
                })
    finally:
        emu.stop()
    lines = [
        f"Machine: {os.cpu_count()} cores, {platform.machine()}, Linux {platform.release()}; {args.runs} late runs and {args.runs * 2} ready runs per client; IMDS emulator on 127.0.0.1; outputs on tmpfs.",
        "",
        "| client | user-data available → ready, median | max | IMDS requests in the first 2 s of waiting | ready IMDS: wall, median | peak RSS |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['client']} | {r['delay_median_ms']:.0f} ms | {r['delay_max_ms']:.0f} ms | {r['requests_waiting']:.0f} | {r['wall_median_ms']:.1f} ms | {r['rss_max_mb']:.1f} MB |")
    table = "\n".join(lines)
    print(table)
    if args.runs >= DEFAULT_RUNS:
        benchlib.write_section("metadata", "metadata stage (`scripts/bench-metadata.py`)", table)


if __name__ == "__main__":
    sys.exit(main())
