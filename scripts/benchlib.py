"""What the benchmark scripts share: the S3-compatible servers on loopback (moto, bench-s3)
with their request logs, the environment that points every client at one, the 2,020-object
tree of ../shared/README.md section 3, timed runs, and writing a section of BENCHMARKS.md."""
import concurrent.futures, os, random, re, socket, subprocess, sys, tempfile, time
from pathlib import Path



def write_section(name, title, table):
    """Replaces the section between <!-- NAME:start --> and <!-- NAME:end -->, or adds it."""
    bench = ROOT / "BENCHMARKS.md"
    text = bench.read_text() if bench.exists() else "# Benchmarks\n"
    section = f"<!-- {name}:start -->\n{table}\n<!-- {name}:end -->"
    pattern = rf"<!-- {name}:start -->.*<!-- {name}:end -->"
    if re.search(pattern, text, flags=re.S):
        text = re.sub(pattern, lambda _: section, text, flags=re.S)
    else:
        text += f"\n## {title}\n\n{section}\n"
    bench.write_text(text)


ROOT = Path(__file__).resolve().parent.parent
# Where `cargo build --release` puts the binaries: CARGO_TARGET_DIR when set.
RELEASE = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target") / "release"
BIN = RELEASE / "bootstage"
BENCH_S3 = RELEASE / "bench-s3"
BENCH_FLOOR = RELEASE / "bench-floor"
ACCESS_KEY, SECRET_KEY = "test", "testtest"


def scratch():
    """The benchmark's work directory, on tmpfs (/dev/shm) where there is one.

    This machine's root file system is ext4 without a journal. Creating a file there soon
    after files were deleted costs about 1 ms of kernel CPU (ext4 skips recently deleted
    inodes, reading the inode table for each: `perf` shows `recently_deleted` at half of
    `tar -x`'s time), so every tool's figures would be mostly this disk's. An instance's
    own volume (journaled ext4 or xfs) does not charge that; tmpfs charges none. The cost
    of flushing (bootstage's syncfs) is not measured there either, for any tool."""
    shm = Path("/dev/shm")
    return tempfile.TemporaryDirectory(dir=shm if shm.is_dir() else None)


def cpu_seconds(pid):
    """User + system CPU a live process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """An S3-compatible server on loopback that logs one line per request to log_path."""
    name = None

    def __init__(self, work):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(work) / f"{self.name}.log"
        self.proc = self.start(Path(work))
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise SystemExit(f"{self.name} did not start")

    def is_request(self, line):
        return True

    def requests(self):
        """Logged requests so far, after a sentinel request is itself logged."""
        token = f"/__sentinel_{time.monotonic_ns()}"
        with socket.create_connection(("127.0.0.1", self.port)) as s:
            s.sendall(f"GET {token} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            while s.recv(65536):
                pass
        for _ in range(400):
            lines = [l for l in self.log_path.read_text(errors="replace").splitlines() if self.is_request(l)]
            if any(token in l for l in lines):
                return [l for l in lines if "__sentinel_" not in l]
            time.sleep(0.01)
        raise SystemExit(f"{self.name}'s log did not catch up")

    def stop(self):
        self.proc.kill()
        self.proc.wait()


class Moto(Server):
    name = "moto"

    def start(self, work):
        return subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                stdout=subprocess.DEVNULL, stderr=open(self.log_path, "w"))

    def is_request(self, line):
        return '"' in line  # werkzeug's access log line quotes the request line


class BenchS3(Server):
    """bench-s3; with `get_rate`, it serves at most that many GETs and HEADs a second and
    answers the rest 503 SlowDown, as S3 answers a prefix asked for more than it serves."""
    name = "bench-s3"

    def __init__(self, work, get_rate=None):
        self.get_rate = get_rate
        super().__init__(work)

    def start(self, work):
        root = work / "bench-s3-root"
        root.mkdir()
        rate = ["--get-rate", str(self.get_rate)] if self.get_rate else []
        return subprocess.Popen([str(BENCH_S3), f"127.0.0.1:{self.port}", str(root), ACCESS_KEY, SECRET_KEY, *rate],
                                stdout=open(self.log_path, "w"), stderr=open(work / "bench-s3.err", "w"))


SERVERS = {server.name: server for server in [Moto, BenchS3]}


# In every bootstage a benchmark starts: EC2's provider whatever this machine's DMI says (a
# VM on Compute Engine or Azure names its cloud), the other clouds' metadata services on a
# closed loopback port; the benchmark points EC2's IMDS at its emulator, or disables it.
LOOPBACK_ONLY = {
    "BOOTSTAGE_PROVIDER": "aws", "GCE_METADATA_HOST": "127.0.0.1:9",
    "BOOTSTAGE_AZURE_IMDS": "http://127.0.0.1:9", "BOOTSTAGE_AZURE_WIRESERVER": "http://127.0.0.1:9",
    "BOOTSTAGE_OPENSTACK_METADATA": "http://127.0.0.1:9",
}


def env_for(server):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "RCLONE_", "BOOTSTAGE_")) and not k.lower().endswith("_proxy")}
    env.update({
        "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": server.url, "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null", "BOOTSTAGE_LOG": "warn",
        "RCLONE_CONFIG": "/dev/null", "RCLONE_CONFIG_S3_TYPE": "s3", "RCLONE_CONFIG_S3_PROVIDER": "Other",
        "RCLONE_CONFIG_S3_ENDPOINT": server.url, "RCLONE_CONFIG_S3_ACCESS_KEY_ID": ACCESS_KEY,
        "RCLONE_CONFIG_S3_SECRET_ACCESS_KEY": SECRET_KEY, "RCLONE_CONFIG_S3_FORCE_PATH_STYLE": "true",
        "S3_ENDPOINT_URL": server.url,
        **LOOPBACK_ONLY,
    })
    return env


def build_tree(server, small):
    import boto3
    s3 = boto3.client("s3", endpoint_url=server.url, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, region_name="us-east-1")
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


def run(argv, env, work, stdin=None):
    # Every tool starts with nothing left to write back: bootstage's syncfs would otherwise
    # pay for flushing the uploads or the previous tool's files.
    os.sync()
    out = Path(work) / "time.out"
    start = time.monotonic()
    proc = subprocess.run(["/usr/bin/time", "-f", "%U %S %M", "-o", str(out), *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          stdin=open(stdin) if stdin else subprocess.DEVNULL)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed: {proc.stderr[-2000:]}")
    user, sys_, rss = out.read_text().split()[-3:]
    return wall, float(user) + float(sys_), int(rss) / 1024
