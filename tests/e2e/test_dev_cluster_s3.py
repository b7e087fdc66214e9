"""``trellis dev-cluster up --s3``: a real S3 server (SeaweedFS) next to the control plane,
reached with the credentials of its Secret, refusing others, and gone after ``down``."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError

from controller import localwork
from controller.devcluster import s3
from controller.devcluster.cluster import DevCluster

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]
TRELLIS = Path(sys.executable).with_name("trellis")


def trellis(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(TRELLIS), *args], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def client(endpoint: str, key: str, secret: str):
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=key, aws_secret_access_key=secret,
                        config=Config(s3={"addressing_style": "path"},
                                      retries={"max_attempts": 1}))


def status_of(call) -> int:
    with pytest.raises(ClientError) as err:
        call()
    return err.value.response["ResponseMetadata"]["HTTPStatusCode"]


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_up_with_s3_serves_objects_to_the_secrets_credentials_only(tmp_path: Path) -> None:
    dev = DevCluster(tmp_path / "cluster")
    try:
        up = trellis("dev-cluster", "up", "--s3", "--dir", str(dev.dir))
        st = dev.state()
        assert st.s3_pid and f"S3 {st.s3_endpoint}" in up.stdout
        server = dev.s3.state()
        assert server.host == "127.0.0.1" and st.s3_endpoint == server.endpoint
        identity = dev.dir / "s3" / "identity.json"
        assert oct(identity.stat().st_mode & 0o777) == "0o600"

        secret = json.loads(dev.kubectl("get", "secret", s3.SECRET, "-n", s3.NAMESPACE,
                                        "-o", "json").stdout)
        data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
        assert data["AWS_ENDPOINT_URL"] == data["METAFLOW_S3_ENDPOINT_URL"] == st.s3_endpoint
        good = client(st.s3_endpoint, data["AWS_ACCESS_KEY_ID"], data["AWS_SECRET_ACCESS_KEY"])
        assert "trellis" in [b["Name"] for b in good.list_buckets()["Buckets"]]

        big = os.urandom(12 * 1024 * 1024)  # over boto3's 8 MB: a multipart upload
        good.upload_fileobj(io.BytesIO(big), "trellis", "models/v1/model.pt")
        good.put_object(Bucket="trellis", Key="models/v1/metrics.json", Body=b'{"acc": 0.9}')
        listed = good.list_objects_v2(Bucket="trellis", Prefix="models/v1/")
        assert {o["Key"]: o["Size"] for o in listed["Contents"]} == {
            "models/v1/model.pt": len(big), "models/v1/metrics.json": 12}
        got = good.get_object(Bucket="trellis", Key="models/v1/model.pt")["Body"].read()
        assert hashlib.sha256(got).digest() == hashlib.sha256(big).digest()

        # An unknown key, a wrong secret and no signature at all: refused.
        wrong = client(st.s3_endpoint, "NOTAKEY", "nope")
        assert status_of(lambda: wrong.get_object(Bucket="trellis",
                                                  Key="models/v1/metrics.json")) == 403
        forged = client(st.s3_endpoint, data["AWS_ACCESS_KEY_ID"], "wrong-secret")
        assert status_of(lambda: forged.put_object(Bucket="trellis", Key="x",
                                                   Body=b"x")) == 403
        anonymous = boto3.client("s3", endpoint_url=st.s3_endpoint, region_name="us-east-1",
                                 config=Config(signature_version=UNSIGNED))
        assert status_of(lambda: anonymous.list_objects_v2(Bucket="trellis")) == 403

        good.delete_objects(Bucket="trellis", Delete={"Objects": [
            {"Key": "models/v1/model.pt"}, {"Key": "models/v1/metrics.json"}]})
        assert good.list_objects_v2(Bucket="trellis").get("KeyCount", 0) == 0
        assert status_of(lambda: good.head_object(Bucket="trellis", Key="x")) == 404

        # `env` hands a shell the same server.
        env = trellis("dev-cluster", "env", "--dir", str(dev.dir)).stdout
        assert f"export AWS_ENDPOINT_URL={st.s3_endpoint}" in env

        ports = list(server.ports.values())
        assert all(listening(p) for p in (server.ports["s3"], server.ports["filer"]))
        trellis("dev-cluster", "down", "--dir", str(dev.dir))
        assert localwork.find([dev.dir]) == []
        assert not any(listening(p) for p in ports)
        assert not any(p.exists() for p in s3.grpc_sockets(server.ports))  # weed's, in /tmp
        assert sorted(p.name for p in (dev.dir / "s3").iterdir()) == ["weed.log"]
    finally:
        dev.down()

