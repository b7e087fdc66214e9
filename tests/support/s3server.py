"""The dev cluster's S3 server (SeaweedFS, ``controller.devcluster.s3``) on its own, for
tests that need real S3 but no control plane, and the environment that points at it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from controller.devcluster import binaries
from controller.devcluster.s3 import REGION, S3Server


@contextmanager
def running(root: Path) -> Iterator[S3Server]:
    """A ready server under ``root/s3`` (bucket ``trellis``), stopped afterwards."""
    server = S3Server(root)
    server.start(binaries.ensure_weed())
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def environment(server: S3Server) -> dict[str, str]:
    """What the Secret trellis-s3 gives the operator and the trainer pod."""
    st, creds = server.state(), server.credentials()
    assert st is not None
    return {"AWS_ACCESS_KEY_ID": creds.access_key, "AWS_SECRET_ACCESS_KEY": creds.secret_key,
            "AWS_DEFAULT_REGION": REGION, "TRELLIS_S3_ENDPOINT_URL": st.endpoint,
            "METAFLOW_S3_ENDPOINT_URL": st.endpoint,
            "TRELLIS_DATASTORE_S3_ROOT": f"s3://{st.bucket}/metaflow"}
