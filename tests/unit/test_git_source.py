"""``controller.gitops.git_source`` with real git on local repositories (no network)."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from controller.gitops import git_source
from controller.gitops.git_source import Credentials, FetchError
from controller.settings import Settings
from tests.support.gitrepo import GitRepo


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    r = GitRepo(tmp_path / "farm")
    r.write("flows/f.py", "print('pumpkins')\n")
    r.write("specs/a.yaml", "a: 1\n")
    r.commit_and_push("first")
    return r


def fetch(cache: Path, url: str, ref: dict[str, str], creds: Credentials | None = None) -> str:
    return asyncio.run(git_source.fetch(cache, "ns", "farm", url, ref, creds))


def test_credentials_from_a_secret_never_show_in_repr() -> None:
    token = Credentials.from_secret({"token": b"s3cr3t\n"})
    assert (token.username, token.password) == ("git", "s3cr3t")
    basic = Credentials.from_secret({"username": b"farmer", "password": b"pw"})
    assert (basic.username, basic.password) == ("farmer", "pw")
    ssh = Credentials.from_secret({"identity": b"KEY", "known_hosts": b"host key"})
    assert ssh.password is None and ssh.identity == b"KEY"
    assert "s3cr3t" not in repr(token) and "KEY" not in repr(ssh)


def test_redaction_of_urls_and_secret_values() -> None:
    assert git_source.redact("fatal: https://bob:hunter2@git.example.com/x.git: 403",
                             ["hunter2"]) == "fatal: https://***@git.example.com/x.git: 403"
    assert git_source.redact("token abc123 refused", ["abc123"]) == "token *** refused"
    assert git_source.display_url("https://tok@host/x.git") == "https://***@host/x.git"


def test_fetch_branch_tag_and_commit(repo: GitRepo, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = repo.head()
    repo.git("tag", "v1")
    repo.git("push", "--quiet", "origin", "v1")
    repo.write("specs/a.yaml", "a: 2\n")
    second = repo.commit_and_push("second")
    assert fetch(cache, str(repo.remote), {"branch": "main"}) == second
    assert fetch(cache, f"file://{repo.remote}", {"tag": "v1"}) == first
    assert fetch(cache, str(repo.remote), {"commit": first[:10]}) == first


def test_force_push_to_an_older_commit_is_followed(repo: GitRepo, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = repo.head()
    repo.write("specs/a.yaml", "a: 2\n")
    repo.commit_and_push("second")
    fetch(cache, str(repo.remote), {"branch": "main"})
    repo.git("reset", "--quiet", "--hard", first)
    repo.push(force=True)
    assert fetch(cache, str(repo.remote), {"branch": "main"}) == first


def test_fetch_errors_are_the_useful_last_line(repo: GitRepo, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(FetchError, match=r"^fatal: couldn't find remote ref refs/heads/nope$"):
        fetch(cache, str(repo.remote), {"branch": "nope"})
    missing = tmp_path / "missing.git"
    with pytest.raises(FetchError) as err:
        fetch(cache, str(missing), {"branch": "main"})
    assert str(err.value) == f"fatal: '{missing}' does not appear to be a git repository"
    with pytest.raises(FetchError, match="commit 1234567 not found in"):
        fetch(cache, str(repo.remote), {"commit": "1234567"})


def test_git_runs_are_killed_at_their_time_limit() -> None:
    started = time.monotonic()
    with pytest.raises(FetchError, match="timed out after 0s"):
        asyncio.run(git_source.run_git(["-c", "alias.slow=!sleep 20", "slow"], limit_s=0.3))
    assert time.monotonic() - started < 5


def test_askpass_hands_git_the_secret_through_the_environment(tmp_path: Path) -> None:
    creds = Credentials.from_secret({"username": b"farmer", "password": b"pw"})
    with git_source._credential_env(tmp_path, creds) as env:
        script = env["GIT_ASKPASS"]
        assert "pw" not in Path(script).read_text()  # the script holds no secret
        ask = [subprocess.run([script, prompt], env=env, capture_output=True, text=True,
                              check=True).stdout for prompt in ("Username for x:", "Password:")]
    assert ask == ["farmer\n", "pw\n"]


def test_ssh_keys_exist_only_while_git_runs(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="no known_hosts"), \
            git_source._credential_env(tmp_path, Credentials(identity=b"KEY")):
        pass
    creds = Credentials(identity=b"KEY", known_hosts=b"host ssh-ed25519 AAAA")
    with git_source._credential_env(tmp_path, creds) as env:
        command = env["GIT_SSH_COMMAND"]
        key = Path(command.split("-i ")[1].split(" ")[0])
        assert key.read_bytes() == b"KEY\n"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert "StrictHostKeyChecking=yes" in command
    assert not key.exists()


def test_checkout_for_exports_exactly_that_commit_read_only(repo: GitRepo,
                                                            tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path / "state")
    first = repo.head()
    repo.write("flows/f.py", "print('squash')\n")
    second = repo.commit_and_push("second")
    fetch(settings.repo_cache_dir, str(repo.remote), {"branch": "main"})
    with ThreadPoolExecutor(4) as pool:  # concurrent callers share one export
        paths = set(pool.map(lambda _: git_source.checkout_for(settings, "ns", "farm", first),
                             range(4)))
    (old,) = paths
    assert old.name == first
    assert (old / "flows" / "f.py").read_text() == "print('pumpkins')\n"
    assert not (old / "flows" / "f.py").stat().st_mode & 0o222
    new = git_source.checkout_for(settings, "ns", "farm", second[:8])
    assert new.name == second and (new / "flows" / "f.py").read_text() == "print('squash')\n"
    leftovers = [p for p in old.parent.iterdir() if p.name.startswith(".tmp")]
    assert leftovers == []
    with pytest.raises(FetchError, match="not in the cache"):
        git_source.checkout_for(settings, "ns", "farm", "f" * 40)


@pytest.mark.parametrize("filters", [True, False],
                         ids=["tarfile-filters", "python-before-3.11.4"])
def test_exports_keep_links_inside_the_tree_and_skip_the_others(
        repo: GitRepo, tmp_path: Path, filters: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """With tarfile's "data" filter, or the same rules by hand where Python lacks it
    (Debian bookworm's 3.11.2 in the dev images)."""
    import tarfile

    if not filters:
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    repo.write("flows/run.sh", "echo pumpkins\n")
    (repo.work / "flows" / "run.sh").chmod(0o4777)  # git keeps only the x bit
    (repo.work / "flows" / "same.py").symlink_to("f.py")
    (repo.work / "specs" / "flows").symlink_to("../flows")
    (repo.work / "specs" / "passwd").symlink_to("../../../../../../etc/passwd")
    (repo.work / "specs" / "root").symlink_to("/")
    sha = repo.commit_and_push("links")
    settings = Settings(state_dir=tmp_path / "state")
    fetch(settings.repo_cache_dir, str(repo.remote), {"branch": "main"})
    out = git_source.checkout_for(settings, "ns", "farm", sha)
    assert (out / "flows" / "same.py").read_text() == "print('pumpkins')\n"
    assert (out / "specs" / "flows" / "f.py").read_text() == "print('pumpkins')\n"
    assert not (out / "specs" / "passwd").is_symlink()
    assert not (out / "specs" / "root").is_symlink()
    assert (out / "specs" / "a.yaml").read_text() == "a: 1\n"
    assert stat.S_IMODE((out / "flows" / "run.sh").stat().st_mode) == 0o555


def test_gc_keeps_recent_and_current_exports(repo: GitRepo, tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path / "state")
    shas = [repo.head()]
    for i in range(git_source.KEEP_CHECKOUTS + 2):
        repo.write("specs/a.yaml", f"a: {i}\n")
        shas.append(repo.commit_and_push(f"c{i}"))
    fetch(settings.repo_cache_dir, str(repo.remote), {"commit": shas[0]})
    paths = [git_source.checkout_for(settings, "ns", "farm", s) for s in shas]
    old = time.time() - 2 * git_source.CHECKOUT_MAX_AGE_S
    for i, p in enumerate(paths):
        os.utime(p, (old + i, old + i))  # all stale, newest last
    os.utime(paths[1], None)  # one in use just now
    removed = git_source.gc_checkouts(settings, "ns", "farm", keep={shas[0]})
    assert sorted(removed) == sorted(paths[2:4])  # beyond the newest 8, stale, not kept
    assert paths[0].exists() and paths[1].exists() and paths[-1].exists()


def test_webhook_signatures() -> None:
    # Imported here: the webhook module loads the Kubernetes client, which reads
    # KUBECONFIG once, at import (see the report on controller/kube.py).
    from controller.gitops.webhook import sign, signature_ok

    body = b'{"ref": "refs/heads/main"}'
    good = sign(b"key", body)
    assert good.startswith("sha256=") and len(good) == 7 + 64
    assert signature_ok(b"key", body, good)
    assert not signature_ok(b"other", body, good)
    assert not signature_ok(b"key", body + b" ", good)
    assert not signature_ok(b"key", body, "sha1=" + good[7:])
