"""Fetching spec repositories into the operator's cache, and exporting commits.

Layout under ``settings.repo_cache_dir``::

    <namespace>/<name>/repo.git          a bare repository, fetched into (never checked out)
    <namespace>/<name>/commits/<sha>/    read-only exports of single commits (for training)

Every git call runs as an asyncio subprocess (or, for the blocking export, in the
caller's thread) with a timeout, so the operator's event loop never waits on a slow
remote. Credentials come from the SpecRepository's Secret and reach git only through
the child's environment (``GIT_ASKPASS``) or short-lived files (ssh keys), never the
command line or the logs. The remote's ref is fetched with force into a private ref,
so a force-push to an older commit is followed like any other move.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.settings import Settings

FETCH_TIMEOUT_S = 120.0
LOCAL_TIMEOUT_S = 60.0
TARGET_REF = "refs/trellis/target"
KEEP_CHECKOUTS = 8
CHECKOUT_MAX_AGE_S = 24 * 3600.0
_ASKPASS = """#!/bin/sh
case "$1" in
  Username*) printf '%s\\n' "$TRELLIS_GIT_USERNAME" ;;
  *) printf '%s\\n' "$TRELLIS_GIT_PASSWORD" ;;
esac
"""
_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")
# The keys of a SpecRepository's ``spec.secretRef`` Secret (Flux's names). The operator's
# fetch reads them here, and the training pod's clone (``controller.training.clone``)
# reads the same keys as files: one list, so a Secret that works for one works for both.
KEY_USERNAME = "username"
KEY_PASSWORD = "password"
KEY_TOKEN = "token"  # a password under another name (username "git" when none is given)
KEY_IDENTITY = "identity"  # an ssh private key
KEY_KNOWN_HOSTS = "known_hosts"  # required with an identity: unknown host keys are refused
DEFAULT_USERNAME = "git"
# What every git run gets: no prompts (nobody answers them), and a stalled transfer
# fails instead of hanging until the time limit.
GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_HTTP_LOW_SPEED_LIMIT": "1000",
           "GIT_HTTP_LOW_SPEED_TIME": "30"}
NO_KNOWN_HOSTS = ("the secret has an ssh identity but no known_hosts: refusing to trust an "
                  "unknown host key")


class FetchError(Exception):
    """A fetch that failed; the message is git's last line, with secrets removed."""


@dataclass(frozen=True)
class Credentials:
    """Git credentials from a Secret: ``username``/``password`` or ``token`` (https),
    ``identity`` + ``known_hosts`` (ssh)."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    identity: bytes | None = field(default=None, repr=False)
    known_hosts: bytes | None = field(default=None, repr=False)

    @classmethod
    def from_secret(cls, data: dict[str, bytes] | None) -> Credentials:
        data = data or {}

        def text(key: str) -> str | None:
            value = data.get(key)
            return value.decode().strip() if value else None

        password = text(KEY_PASSWORD) or text(KEY_TOKEN)
        username = text(KEY_USERNAME) or (DEFAULT_USERNAME if password else None)
        return cls(username=username, password=password, identity=data.get(KEY_IDENTITY),
                   known_hosts=data.get(KEY_KNOWN_HOSTS))

    def secrets(self) -> list[str]:
        return [s for s in (self.password,) if s]


def repo_dir(cache: Path, namespace: str, name: str) -> Path:
    return cache / namespace / name


def mirror_dir(cache: Path, namespace: str, name: str) -> Path:
    return repo_dir(cache, namespace, name) / "repo.git"


def commits_dir(cache: Path, namespace: str, name: str) -> Path:
    return repo_dir(cache, namespace, name) / "commits"


def redact(text: str, secrets: list[str] | tuple[str, ...] = ()) -> str:
    """``https://user:pw@host`` → ``https://***@host``; known secret values → ``***``."""
    text = _USERINFO.sub("***@", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def display_url(url: str) -> str:
    """The URL as it may appear on objects and in messages (no user info)."""
    return redact(url)


def refspecs(ref: dict[str, Any]) -> tuple[list[str], str]:
    """What to fetch for ``spec.ref``, and the revision naming the wanted commit."""
    if ref.get("tag"):
        return [f"+refs/tags/{ref['tag']}:{TARGET_REF}"], TARGET_REF
    if ref.get("commit"):
        # A commit is only reachable through some ref; fetch them all and look it up.
        return (["+refs/heads/*:refs/trellis/heads/*", "+refs/tags/*:refs/trellis/tags/*"],
                f"{ref['commit']}^{{commit}}")
    return [f"+refs/heads/{ref.get('branch') or 'main'}:{TARGET_REF}"], TARGET_REF


def describe_ref(ref: dict[str, Any]) -> str:
    for key in ("branch", "tag", "commit"):
        if ref.get(key):
            return f"{key} {ref[key]}"
    return "branch main"


_BOILERPLATE = ("fatal: Could not read from remote repository.",
                "Please make sure you have the correct access rights",
                "and the repository exists.")


def _last_line(text: str) -> str:
    """git's last line that says something (its generic advice lines are dropped)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    useful = [line for line in lines if line not in _BOILERPLATE]
    return (useful or lines or ["git failed without a message"])[-1]


async def run_git(args: list[str], *, env: dict[str, str] | None = None,
                  limit_s: float = LOCAL_TIMEOUT_S, secrets: list[str] | None = None) -> str:
    """Run git; its stdout, or FetchError with the last line of stderr."""
    # Its own process group: git's helpers (ssh, git-remote-https) die with it.
    proc = await asyncio.create_subprocess_exec(
        "git", *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env or _base_env(), start_new_session=True)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), limit_s)
    except TimeoutError:
        await _kill_group(proc)
        raise FetchError(f"git {args[0]} timed out after {limit_s:.0f}s") from None
    except asyncio.CancelledError:
        await _kill_group(proc)
        raise
    if proc.returncode != 0:
        raise FetchError(redact(_last_line(err.decode(errors="replace")), secrets or []))
    return out.decode(errors="replace").strip()


async def _kill_group(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    await proc.wait()


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update({**GIT_ENV, "LC_ALL": "C"})
    return env


def ssh_command(identity: str | None = None, known_hosts: str | None = None) -> str:
    """``GIT_SSH_COMMAND``: never a prompt; with an identity, only that key and only the
    host keys in ``known_hosts`` (an unknown or changed host key fails the fetch)."""
    if identity is None:
        return "ssh -o BatchMode=yes -o ConnectTimeout=30"
    return (f"ssh -i {shlex.quote(identity)} -o IdentitiesOnly=yes -o BatchMode=yes "
            f"-o UserKnownHostsFile={shlex.quote(known_hosts or '/dev/null')} "
            "-o StrictHostKeyChecking=yes -o ConnectTimeout=30")


def _askpass_script(cache: Path) -> Path:
    """A helper that prints credentials from its environment (it holds none itself)."""
    path = cache / ".askpass.sh"
    if not path.exists() or path.read_text() != _ASKPASS:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = cache / f".askpass.{uuid.uuid4().hex}"
        tmp.write_text(_ASKPASS)
        tmp.chmod(0o700)
        tmp.replace(path)
    return path


@contextlib.contextmanager
def _credential_env(cache: Path, creds: Credentials) -> Iterator[dict[str, str]]:
    """git's environment for these credentials; ssh key files live only inside."""
    env = _base_env()
    if creds.password:
        env["GIT_ASKPASS"] = str(_askpass_script(cache))
        env["TRELLIS_GIT_USERNAME"] = creds.username or DEFAULT_USERNAME
        env["TRELLIS_GIT_PASSWORD"] = creds.password
    if not creds.identity:
        env["GIT_SSH_COMMAND"] = ssh_command()
        yield env
        return
    if not creds.known_hosts:
        raise FetchError(NO_KNOWN_HOSTS)
    keydir = Path(tempfile.mkdtemp(prefix="trellis-ssh-"))
    try:
        key, hosts = keydir / "identity", keydir / "known_hosts"
        key.touch(mode=0o600)
        key.write_bytes(creds.identity if creds.identity.endswith(b"\n")
                        else creds.identity + b"\n")
        hosts.write_bytes(creds.known_hosts)
        env["GIT_SSH_COMMAND"] = ssh_command(str(key), str(hosts))
        yield env
    finally:
        shutil.rmtree(keydir, ignore_errors=True)


async def fetch(cache: Path, namespace: str, name: str, url: str, ref: dict[str, Any],
                creds: Credentials | None = None, *, limit_s: float = FETCH_TIMEOUT_S) -> str:
    """Fetch ``ref`` of ``url`` into the cache; the full sha of the wanted commit."""
    creds = creds or Credentials()
    mirror = mirror_dir(cache, namespace, name)
    if not (mirror / "HEAD").exists():
        mirror.parent.mkdir(parents=True, exist_ok=True)
        await run_git(["init", "--quiet", "--bare", str(mirror)])
    specs, revision = refspecs(ref)
    with _credential_env(cache, creds) as env:
        await run_git(["--git-dir", str(mirror), "fetch", "--quiet", "--force", "--prune",
                       "--no-tags", "--no-write-fetch-head", "--", url, *specs],
                      env=env, limit_s=limit_s, secrets=creds.secrets())
    try:
        return await run_git(["--git-dir", str(mirror), "rev-parse", "--verify", "--quiet",
                               revision])
    except FetchError:
        raise FetchError(f"{describe_ref(ref)} not found in {display_url(url)}") from None


def remove_mirror(cache: Path, namespace: str, name: str) -> None:
    """Forget the fetched repository (exports stay: a training run may be reading one)."""
    shutil.rmtree(mirror_dir(cache, namespace, name), ignore_errors=True)


# ------------------------------------------------------------------ commit exports
def _skip_unsafe(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    """tarfile's "data" filter, skipping (not failing on) links that leave the tree."""
    try:
        return tarfile.data_filter(member, dest)
    except tarfile.FilterError:
        return None


def _inside(root: str, path: str) -> bool:
    return os.path.commonpath([root, path]) == root


def _safe_members(tar: tarfile.TarFile, dest: Path) -> Iterator[tarfile.TarInfo]:
    """The "data" filter's rules where tarfile has no filters (Python < 3.11.4, e.g.
    Debian bookworm's 3.11.2, the dev images' base): files, directories and links that
    stay inside ``dest``; no devices or fifos; no set-id, sticky or group/other write
    bits. What breaks a rule is skipped, as ``_skip_unsafe`` skips it."""
    root = os.path.realpath(dest)
    for member in tar:
        name = member.name.lstrip("/")
        target = os.path.realpath(os.path.join(root, name))
        if not _inside(root, target):
            continue
        if member.issym():
            if os.path.isabs(member.linkname) or not _inside(root, os.path.realpath(
                    os.path.join(os.path.dirname(target), member.linkname))):
                continue
        elif member.islnk():
            if not _inside(root, os.path.realpath(os.path.join(root, member.linkname))):
                continue
        elif not (member.isfile() or member.isdir()):
            continue
        member.name = name
        member.mode = (member.mode & 0o755) | (0o700 if member.isdir() else 0o600)
        yield member


def _extract(tar: tarfile.TarFile, dest: Path) -> None:
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter=_skip_unsafe)
    else:
        tar.extractall(dest, members=_safe_members(tar, dest))


def _make_read_only(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for f in filenames:
            p = Path(dirpath) / f
            if not p.is_symlink():
                mode = p.stat().st_mode
                p.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def checkout_for(settings: Settings, namespace: str, name: str, commit: str) -> Path:
    """A read-only export of exactly ``commit`` of SpecRepository ``namespace/name``.

    Blocking (it runs ``git archive``): call it with ``asyncio.to_thread`` from async
    code. Idempotent and safe to call concurrently; an existing export is reused (and
    its age refreshed, so garbage collection spares exports in use). Files are
    read-only; directories stay writable, so tools may add caches (``__pycache__``)
    but cannot change what the commit says. Raises ``FetchError`` when the commit
    has not been fetched.
    """
    cache = settings.repo_cache_dir
    mirror = mirror_dir(cache, namespace, name)
    if re.fullmatch(r"[0-9a-f]{40}", commit):
        dest = commits_dir(cache, namespace, name) / commit
        if dest.is_dir():
            os.utime(dest)
            return dest
    proc = subprocess.run(["git", "--git-dir", str(mirror), "rev-parse", "--verify", "--quiet",
                           f"{commit}^{{commit}}"], capture_output=True, text=True,
                          timeout=LOCAL_TIMEOUT_S, env=_base_env(), check=False)
    if proc.returncode != 0:
        raise FetchError(f"commit {commit} is not in the cache of {namespace}/{name}")
    sha = proc.stdout.strip()
    dest = commits_dir(cache, namespace, name) / sha
    if dest.is_dir():
        os.utime(dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".tmp-{sha[:12]}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        with subprocess.Popen(["git", "--git-dir", str(mirror), "archive", "--format=tar", sha],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=_base_env()) as archive:
            assert archive.stdout is not None
            with tarfile.open(fileobj=archive.stdout, mode="r|") as tar:
                _extract(tar, tmp)
            err = archive.stderr.read() if archive.stderr else b""
            if archive.wait(timeout=LOCAL_TIMEOUT_S) != 0:
                raise FetchError(_last_line(err.decode(errors="replace")))
        _make_read_only(tmp)
        try:
            tmp.rename(dest)
        except OSError:  # another caller exported it first
            if not dest.is_dir():
                raise
    finally:
        if tmp.exists():
            _rmtree(tmp)
    return dest


def _rmtree(path: Path) -> None:
    # Exports have read-only files in writable directories: rmtree removes them as is.
    shutil.rmtree(path, ignore_errors=True)


def gc_checkouts(settings: Settings, namespace: str, name: str,
                 keep: set[str] | frozenset[str]) -> list[Path]:
    """Remove exports that are old (a day untouched), not among the newest few, and not
    in ``keep`` (the commits managed Experiments point at). Returns what was removed."""
    base = commits_dir(settings.repo_cache_dir, namespace, name)
    if not base.is_dir():
        return []
    exports = sorted((p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")),
                     key=lambda p: p.stat().st_mtime, reverse=True)
    now = time.time()
    removed = []
    for p in base.glob(".tmp-*"):  # half-written by a process that died
        if now - p.stat().st_mtime > 3600:
            _rmtree(p)
    for p in exports[KEEP_CHECKOUTS:]:
        if p.name not in keep and now - p.stat().st_mtime > CHECKOUT_MAX_AGE_S:
            _rmtree(p)
            removed.append(p)
    return removed
