"""Objects by URI: local paths, ``file://`` and ``s3://`` — what outlives a training pod.

In a cluster the models, their drift references and the feedback exported for a
retrain live in S3 (the trainer pod cannot see the operator's disk); locally they are
files. Callers name an object by URI and never branch on where it lives.

S3 goes through boto3 with the endpoint the operator is configured with
(``TRELLIS_S3_ENDPOINT_URL``; empty: boto3's own ``AWS_ENDPOINT_URL`` or AWS) and the
credentials boto3 finds (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` from the Secret
``trellis-s3`` in a cluster). Every failure comes out as ``ObjectStoreError`` saying
whether retrying can help (``transient``) — its message names no URI: the caller says
which object it wanted — so a caller can classify it by intent
without knowing boto3. The calls block: async callers use the ``a``-prefixed twins,
which run them in a thread.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from controller.serving.router_config import write_atomic

# S3 error codes that describe a moment, not the request: the same call may succeed later.
_TRANSIENT_CODES = frozenset({
    "RequestTimeout", "RequestTimeTooSkewed", "SlowDown", "Throttling", "ThrottlingException",
    "ServiceUnavailable", "InternalError", "OperationAborted",
})


class ObjectStoreError(Exception):
    """An object could not be read or written; ``transient``: the same call may work later."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class ObjectNotFound(ObjectStoreError):
    """No object (or bucket) at that URI."""


@dataclass(frozen=True)
class Location:
    """A parsed object URI: a local ``path``, or an S3 ``bucket`` and ``key``."""

    scheme: str  # "file" or "s3"
    bucket: str = ""
    key: str = ""
    path: str = ""


def parse(uri: str) -> Location:
    """Where ``uri`` points (pure). A bare path or ``file://`` URI is a local file; ``s3://``
    needs a bucket and a key. Anything else is a ``ValueError`` naming what is readable."""
    uri = uri.strip()
    if not uri:
        raise ValueError("empty object URI")
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        if parsed.scheme == "file" and parsed.netloc not in ("", "localhost"):
            raise ValueError(f"a file:// URI on another host ({parsed.netloc}) is not "
                             "readable here")
        return Location("file", path=unquote(parsed.path) if parsed.scheme else uri)
    if parsed.scheme == "s3":
        key = parsed.path.lstrip("/")
        if not parsed.netloc or not key:
            raise ValueError("an s3:// URI needs a bucket and a key (s3://<bucket>/<key>)")
        return Location("s3", bucket=parsed.netloc, key=key)
    raise ValueError(f"only local paths, file:// and s3:// URIs are supported, not "
                     f"{parsed.scheme}://")


def join(base: str, *parts: str) -> str:
    """``base`` with ``parts`` appended, one ``/`` between each (pure; any scheme)."""
    out = base.rstrip("/")
    for part in parts:
        out += "/" + part.strip("/")
    return out


def is_transient(code: str, http_status: int) -> bool:
    """Whether an S3 error answer may go away on its own (pure): throttling, timeouts and
    server errors do; a missing key, a refused signature or a bad request do not."""
    return code in _TRANSIENT_CODES or http_status >= 500 or http_status == 429


class ObjectStore:
    """Reads and writes whole objects by URI. One boto3 client, made on first S3 use."""

    def __init__(self, endpoint_url: str = "") -> None:
        self.endpoint_url = endpoint_url
        self._client: Any = None
        self._lock = threading.Lock()  # boto3 clients are thread-safe; making one is not

    # ------------------------------------------------------------------ blocking
    def read(self, uri: str) -> bytes:
        loc = parse(uri)
        if loc.scheme == "file":
            try:
                return Path(loc.path).read_bytes()
            except FileNotFoundError as exc:
                raise ObjectNotFound("no such file") from exc
            except OSError as exc:
                raise ObjectStoreError(str(exc)) from exc
        response = self._s3_call("read", "get_object", Bucket=loc.bucket, Key=loc.key)
        return self._s3_body(response)

    def write(self, uri: str, data: bytes) -> None:
        """Put ``data`` at ``uri``: whole or not at all (a local file is replaced atomically)."""
        loc = parse(uri)
        if loc.scheme == "file":
            try:
                write_atomic(Path(loc.path), data)
            except OSError as exc:
                raise ObjectStoreError(str(exc)) from exc
            return
        self._s3_call("write", "put_object", Bucket=loc.bucket, Key=loc.key, Body=data)

    def list(self, prefix: str) -> list[str]:
        """The URIs of every object under ``prefix`` (a "directory": ``prefix/...``),
        sorted. Nothing there is an empty list, not an error."""
        loc = parse(prefix)
        if loc.scheme == "file":
            root = Path(loc.path)
            try:
                found = [p for p in root.rglob("*") if p.is_file()
                         and not (p.name.startswith(".") and p.name.endswith(".tmp"))]
            except OSError as exc:
                raise ObjectStoreError(str(exc)) from exc
            return sorted(str(p) for p in found)
        base = loc.key.rstrip("/") + "/"
        keys: list[str] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": loc.bucket, "Prefix": base}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._s3_call("list", "list_objects_v2", **kwargs)
            keys += [item["Key"] for item in page.get("Contents") or []]
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                break
        return sorted(f"s3://{loc.bucket}/{key}" for key in keys)

    def delete(self, uris: list[str]) -> None:
        """Remove the objects at ``uris``; one already gone is no error."""
        by_bucket: dict[str, list[str]] = {}
        for uri in uris:
            loc = parse(uri)
            if loc.scheme == "file":
                try:
                    Path(loc.path).unlink(missing_ok=True)
                except OSError as exc:
                    raise ObjectStoreError(str(exc)) from exc
            else:
                by_bucket.setdefault(loc.bucket, []).append(loc.key)
        for bucket, keys in by_bucket.items():
            for start in range(0, len(keys), 1000):  # S3's limit per DeleteObjects call
                batch = [{"Key": key} for key in keys[start:start + 1000]]
                answer = self._s3_call("delete", "delete_objects", Bucket=bucket,
                                       Delete={"Objects": batch, "Quiet": True})
                errors = [e for e in answer.get("Errors") or []
                          if e.get("Code") != "NoSuchKey"]
                if errors:
                    first = errors[0]
                    raise ObjectStoreError(
                        f"S3 delete failed for {len(errors)} object(s): "
                        f"{first.get('Code')} ({first.get('Message')})",
                        transient=is_transient(str(first.get("Code") or ""), 0))

    # ------------------------------------------------------------------ async
    async def aread(self, uri: str) -> bytes:
        return await asyncio.to_thread(self.read, uri)

    async def awrite(self, uri: str, data: bytes) -> None:
        await asyncio.to_thread(self.write, uri, data)

    # ------------------------------------------------------------------ S3
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                # A session of its own: boto3's default one keeps the credentials it
                # found first, whatever the environment says later.
                self._client = boto3.session.Session().client(
                    "s3", endpoint_url=self.endpoint_url or None,
                    config=Config(s3={"addressing_style": "path"},
                                  retries={"max_attempts": 2, "mode": "standard"},
                                  connect_timeout=5, read_timeout=30))
            return self._client

    def _s3_call(self, what: str, method: str, **kwargs: Any) -> Any:
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            NoCredentialsError,
            ParamValidationError,
            PartialCredentialsError,
        )

        try:
            return getattr(self.client(), method)(**kwargs)
        except ClientError as exc:
            err = exc.response.get("Error") or {}
            code = str(err.get("Code") or "")
            status = int((exc.response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0)
            text = f"S3 {what} failed: {code or status} ({err.get('Message') or exc})"
            if code in ("NoSuchKey", "NoSuchBucket", "404") or (status == 404 and what == "read"):
                raise ObjectNotFound(f"no such object ({code or status})") from exc
            raise ObjectStoreError(text, transient=is_transient(code, status)) from exc
        except (NoCredentialsError, PartialCredentialsError) as exc:
            raise ObjectStoreError(
                f"no S3 credentials ({exc}); the operator takes AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY from the Secret trellis-s3") from exc
        except ParamValidationError as exc:  # e.g. a bucket name S3 does not allow
            raise ObjectStoreError(str(exc)) from exc
        except BotoCoreError as exc:  # no connection, timeouts, a bad endpoint
            raise ObjectStoreError(f"S3 {what} failed: {exc}", transient=True) from exc

    @staticmethod
    def _s3_body(response: dict[str, Any]) -> bytes:
        from botocore.exceptions import BotoCoreError

        try:
            return response["Body"].read()
        except BotoCoreError as exc:  # the connection broke mid-body
            raise ObjectStoreError(f"S3 read failed: {exc}", transient=True) from exc
