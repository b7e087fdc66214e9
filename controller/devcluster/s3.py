"""The dev cluster's S3 server (``trellis dev-cluster up --s3``): SeaweedFS's ``weed server``
with its master, volume server, filer and S3 gateway in one process.

Where cluster-mode training keeps what outlives a pod (models, drift references, feedback
exports, Metaflow's datastore). Everything of it lives under ``<cluster dir>/s3``: data,
logs, the generated identity (one access key per cluster start, written 0600) and the
record of the process, so ``down`` finds it without the cluster's state. The internal
servers listen on loopback only; the S3 gateway listens on the cluster's host address
(loopback, or the node's bridge address, which pods reach, when there is a node). The
credentials and endpoint go into the Secret ``trellis-s3`` of ``trellis-system``. Only
weed's gRPC sockets are elsewhere (``/tmp``, fixed upstream); ``stop`` removes them.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import stat
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from controller.processes import free_port, pid_alive, terminate

NAMESPACE = "trellis-system"  # the operator's (manifests/namespace.yaml)
SECRET = "trellis-s3"
BUCKET = "trellis"
REGION = "us-east-1"  # any name does for SeaweedFS; SigV4 clients want one
# The ports `weed server` opens: each HTTP server and its gRPC twin, all chosen free (the
# gRPC default is HTTP port + 10000, which another cluster may hold).
PORT_NAMES = ("master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc",
              "s3", "s3.grpc")
PROBE = ".trellis-ready"  # written and deleted once: writes work
STOP_GRACE = 3.0  # weed drains for seconds after SIGTERM; the data is disposable anyway


class S3Error(RuntimeError):
    pass


@dataclass
class S3State:
    pid: int
    ports: dict[str, int]
    host: str  # where the S3 gateway listens (the others: 127.0.0.1)
    access_key: str
    started_at: float
    bucket: str = BUCKET

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.ports['s3']}"


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str

    @classmethod
    def generate(cls) -> Credentials:
        return cls("TRELLIS" + secrets.token_hex(7).upper(), secrets.token_urlsafe(30))


def identity_config(creds: Credentials, name: str = "trellis") -> dict:
    """``-s3.config``: one identity with every action. With an identity configured,
    anonymous requests and unknown keys are refused."""
    return {"identities": [{
        "name": name,
        "credentials": [{"accessKey": creds.access_key, "secretKey": creds.secret_key}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    }]}


def master_toml() -> str:
    """``<config_dir>/master.toml``: grow 2 volumes per bucket at a time (not 7), and
    allocate the first volume at once: the hold after a fresh master (up to ~10 s) waits
    for volume servers of a rebuilt cluster, and ours is always new."""
    return ('[master.volume_growth]\n'
            'copy_1 = 2\n'
            'copy_other = 1\n'
            'allocation_deferral = "0s"\n')


def weed_command(weed: str, root: Path, ports: dict[str, int], host: str) -> list[str]:
    """The ``weed server`` command line: one process, small volumes, loopback only (the
    S3 gateway on ``host``), no telemetry, no extra catalog servers, logs on stderr (not
    /tmp), only its own ``config_dir`` besides the system's (``master.toml``)."""
    missing = set(PORT_NAMES) - set(ports)
    if missing:
        raise S3Error(f"ports missing: {sorted(missing)}")
    if host in ("0.0.0.0", "::", ""):
        raise S3Error("the S3 server never listens on every address")
    p = ports
    return [
        weed, "-logtostderr", f"-config_dir={root / 'config'}", "server",
        "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={root / 'data'}",
        f"-master.port={p['master']}", f"-master.port.grpc={p['master.grpc']}",
        "-master.volumeSizeLimitMB=64", "-master.telemetry=false",
        f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume.grpc']}",
        "-volume.max=16", "-volume.preStopSeconds=0",
        "-filer", f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer.grpc']}",
        f"-filer.localSocket={root / 'filer.sock'}",
        "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3.grpc']}",
        f"-s3.ip.bind={host}", f"-s3.config={root / 'identity.json'}",
        f"-s3.localSocket={root / 's3.sock'}",
        "-s3.port.iceberg=0", "-s3.port.lance=0",
    ]


def secret_manifest(st: S3State, creds: Credentials) -> dict:
    """The Secret ``trellis-s3`` as docs/install.md describes it, taken with ``envFrom``:
    boto3 and Metaflow (``AWS_*``, ``METAFLOW_*``), the operator's settings
    (``TRELLIS_*``) and Seldon's rclone-based storage initializer (``RCLONE_CONFIG_S3_*``)."""
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": SECRET, "namespace": NAMESPACE,
                     "labels": {"app.kubernetes.io/part-of": "trellis",
                                "app.kubernetes.io/component": "dev-cluster-s3"}},
        "stringData": {
            "AWS_ACCESS_KEY_ID": creds.access_key,
            "AWS_SECRET_ACCESS_KEY": creds.secret_key,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL": st.endpoint,
            "AWS_ENDPOINT_URL_S3": st.endpoint,
            "METAFLOW_S3_ENDPOINT_URL": st.endpoint,
            "METAFLOW_DATASTORE_SYSROOT_S3": f"s3://{st.bucket}/metaflow",
            "TRELLIS_S3_ENDPOINT_URL": st.endpoint,
            "TRELLIS_DATASTORE_S3_ROOT": f"s3://{st.bucket}/metaflow",
            "RCLONE_CONFIG_S3_TYPE": "s3",
            "RCLONE_CONFIG_S3_PROVIDER": "SeaweedFS",
            "RCLONE_CONFIG_S3_ACCESS_KEY_ID": creds.access_key,
            "RCLONE_CONFIG_S3_SECRET_ACCESS_KEY": creds.secret_key,
            "RCLONE_CONFIG_S3_ENDPOINT": st.endpoint,
        },
    }


class S3Server:
    """One ``weed server`` under ``<cluster dir>/s3``."""

    def __init__(self, cluster_dir: Path) -> None:
        self.root = cluster_dir / "s3"
        self.record = self.root / "server.json"

    def state(self) -> S3State | None:
        try:
            return S3State(**json.loads(self.record.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def credentials(self) -> Credentials:
        ident = json.loads((self.root / "identity.json").read_text())["identities"][0]
        cred = ident["credentials"][0]
        return Credentials(cred["accessKey"], cred["secretKey"])

    def running(self) -> bool:
        st = self.state()
        return bool(st and pid_alive(st.pid))

    def start(self, weed: Path, host: str = "127.0.0.1") -> S3State:
        """Spawn the server (detached, in its own session) with a fresh identity; returns
        at once — ``wait_ready`` then waits for the first S3 answer."""
        self.stop()
        for sub in ("data", "config", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        creds = Credentials.generate()
        _write_private(self.root / "identity.json", json.dumps(identity_config(creds), indent=2))
        (self.root / "config" / "master.toml").write_text(master_toml())
        ports = {name: free_port() for name in PORT_NAMES}
        # Unix socket paths have a 107-byte limit; weed only warns and goes on without.
        cmd = weed_command(str(weed), self.root, ports, host)
        env = {**os.environ, "TMPDIR": str(self.root / "tmp")}
        with open(self.root / "weed.log", "ab") as log:
            proc = subprocess.Popen(cmd, cwd=self.root, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env,
                                    start_new_session=True)
        st = S3State(pid=proc.pid, ports=ports, host=host, access_key=creds.access_key,
                     started_at=time.time())
        self.record.write_text(json.dumps(asdict(st), indent=2))
        return st

    def client(self, creds: Credentials | None = None, st: S3State | None = None):
        """A boto3 S3 client for this server (path-style addressing, SigV4)."""
        import boto3
        from botocore.config import Config

        st = st or self.state()
        creds = creds or self.credentials()
        return boto3.client(
            "s3", endpoint_url=st.endpoint, region_name=REGION,
            aws_access_key_id=creds.access_key, aws_secret_access_key=creds.secret_key,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                          connect_timeout=2, read_timeout=30),
        )

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Create the default bucket as soon as the gateway answers (the first successful
        S3 request, ~2 s), then wait until an object can be written: writes take a lock
        the filer serves only once it joined the lock ring, after a fixed ~8 s scan for
        peers (~10 s from the start here). Returns the seconds since the start."""
        from botocore.exceptions import BotoCoreError, ClientError

        st = self.state()
        if st is None:
            raise S3Error("the S3 server was not started")
        client = self.client(st=st)
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if not pid_alive(st.pid):
                raise S3Error(f"weed exited while starting:\n{self.tail()}")
            try:
                with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                    client.create_bucket(Bucket=st.bucket)
                client.put_object(Bucket=st.bucket, Key=PROBE, Body=b"ok")
                client.delete_object(Bucket=st.bucket, Key=PROBE)
                return time.time() - st.started_at
            except (BotoCoreError, ClientError) as exc:
                last = exc
                time.sleep(0.25)
        raise S3Error(f"S3 server not ready after {timeout:.0f}s ({last}):\n{self.tail()}")

    def stop(self, grace: float = STOP_GRACE) -> bool:
        """Stop the process (SIGTERM, then SIGKILL after ``grace``) and remove its data,
        identity and sockets (logs stay); True if it was running."""
        st = self.state()
        stopped = bool(st) and terminate(st.pid, grace)
        self.record.unlink(missing_ok=True)
        for name in ("data", "config", "tmp"):
            shutil.rmtree(self.root / name, ignore_errors=True)
        for name in ("identity.json", "filer.sock", "s3.sock"):
            (self.root / name).unlink(missing_ok=True)
        if st:
            for path in grpc_sockets(st.ports):
                with contextlib.suppress(OSError):
                    if stat.S_ISSOCK(path.lstat().st_mode):
                        path.unlink()
        return stopped

    def tail(self, lines: int = 20) -> str:
        path = self.root / "weed.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def grpc_sockets(ports: dict[str, int]) -> list[Path]:
    """The Unix sockets ``weed server`` opens for its own gRPC services at a path fixed
    upstream (``/tmp/seaweedfs-<service>-grpc-<port>.sock``, not TMPDIR, no flag), which
    a killed process leaves behind."""
    return [Path(f"/tmp/seaweedfs-{name}-grpc-{ports[f'{name}.grpc']}.sock")
            for name in ("master", "volume", "filer", "s3")]


def apply_secret(st: S3State, creds: Credentials,
                 kubectl: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    """The namespace (if missing) and the Secret, server-side applied."""
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
    items = {"apiVersion": "v1", "kind": "List", "items": [ns, secret_manifest(st, creds)]}
    kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=trellis",
            "-f", "-", input=json.dumps(items))


def _write_private(path: Path, text: str) -> None:
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
