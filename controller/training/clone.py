"""How a training pod gets its source: an init container that fetches exactly the commit
the Experiment came from, with the SpecRepository's own git credentials.

The credentials are the Secret the SpecRepository names in ``spec.secretRef`` (its name
reaches the Experiment as the annotation ``api.ANN_SOURCE_SECRET``), with the keys the
operator's own fetch reads (``controller.gitops.git_source``): ``username``/``password``
or ``token`` for https, ``identity`` + ``known_hosts`` for ssh. The Secret is mounted as
a read-only volume into the init container only (the flow's container, which runs the
team's code, never sees it), and git reads it from there:

- https: a credential helper (in the environment, as git config) prints the username
  and password from the mounted files when the server asks; the secret is never in the
  URL, the pod spec, the command line or the logs.
- ssh: ``GIT_SSH_COMMAND`` with ``-i <identity>``, ``UserKnownHostsFile=<known_hosts>``
  and ``StrictHostKeyChecking=yes``: an unknown or changed host key fails the clone.

A pod can only mount a Secret of its own namespace: an Experiment whose SpecRepository
(and so its Secret) lives in another namespace is reported by ``secret_problem`` before
any Job exists, instead of leaving a pod that never starts.

The fetch is shallow when the server allows fetching a commit by its id (git's own
server does under protocol v2, git's default), else the branches and tags are fetched
and the commit checked out of them: exact either way. Pure: nothing here talks to the
API server.
"""

from __future__ import annotations

from typing import Any

from controller import api
from controller.gitops import git_source

SOURCE_MOUNT = "/workspace"  # the "source" volume, in both containers
SOURCE_DIR = f"{SOURCE_MOUNT}/src"  # the flow's code
CREDENTIALS_DIR = "/etc/trellis/git-credentials"  # the Secret, in the init container only
CONTAINER = "source"
CREDENTIALS_VOLUME = "git-credentials"
# Read by the owner only (kubelet adds group read for the pod's fsGroup, which is how
# the non-root trainer user reads a root-owned file; ssh accepts that for a key it does
# not own).
CREDENTIALS_MODE = 0o400

# The Secret's file names: the keys the operator's fetch reads (one list).
_USER, _PASSWORD, _TOKEN = (git_source.KEY_USERNAME, git_source.KEY_PASSWORD,
                            git_source.KEY_TOKEN)
_IDENTITY, _HOSTS = git_source.KEY_IDENTITY, git_source.KEY_KNOWN_HOSTS

# git runs this for every credential it needs ("get"; "store" and "erase" are ignored).
# It reads the mounted files when asked, so the pod spec names only where they are.
_HELPER = (
    '!f() { test "$1" = get || return 0; cat >/dev/null; d="$TRELLIS_GIT_CREDENTIALS"; '
    f'if [ -s "$d/{_PASSWORD}" ]; then p=$(cat "$d/{_PASSWORD}"); '
    f'elif [ -s "$d/{_TOKEN}" ]; then p=$(cat "$d/{_TOKEN}"); else return 0; fi; '
    f'u={git_source.DEFAULT_USERNAME}; '
    f'if [ -s "$d/{_USER}" ]; then u=$(cat "$d/{_USER}"); fi; '
    "printf 'username=%s\\npassword=%s\\n' \"$u\" \"$p\"; }; f")

# The init container's program. set -e: the first failing step ends it, and its
# message (git's own, URL without credentials) is the container's termination message.
# A refused login is not asked again by the fallback (no second failed attempt).
SCRIPT = f"""set -eu
d="${{TRELLIS_GIT_CREDENTIALS:-}}"
if [ -n "$d" ]; then
  if [ ! -e "$d/{_PASSWORD}" ] && [ ! -e "$d/{_TOKEN}" ] && [ ! -e "$d/{_IDENTITY}" ]; then
    echo "warning: the SpecRepository's Secret $TRELLIS_GIT_SECRET is missing here or has" \\
      "no {_PASSWORD}, {_TOKEN} or {_IDENTITY}: cloning without credentials" >&2
  elif [ -e "$d/{_IDENTITY}" ] && [ ! -e "$d/{_HOSTS}" ]; then
    echo "Secret $TRELLIS_GIT_SECRET: {git_source.NO_KNOWN_HOSTS}" >&2
    exit 1
  fi
fi
git -c init.defaultBranch=source init --quiet "$DIR"
cd "$DIR"
if shallow=$(git fetch --quiet --no-tags --depth 1 "$REPO" "$COMMIT" 2>&1); then
  git checkout --quiet --detach FETCH_HEAD
else
  case "$shallow" in
    *"Authentication failed"*|*"could not read Username"*|*"could not read Password"*|\\
    *"Permission denied"*|*"Host key verification failed"*)
      echo "$shallow" >&2
      exit 128 ;;
  esac
  echo "a shallow fetch of $COMMIT failed ($shallow); fetching branches and tags" >&2
  git fetch --quiet "$REPO" "+refs/heads/*:refs/remotes/origin/*" "+refs/tags/*:refs/tags/*"
  git checkout --quiet --detach "$COMMIT^{{commit}}"
fi
echo "source: $REPO at $(git rev-parse HEAD)"
"""

# What the clone needs: it is small, and runs before the flow.
CLONE_RESOURCES = {"requests": {"cpu": "100m", "memory": "128Mi"},
                   "limits": {"memory": "512Mi"}}


def secret_ref(exp: dict[str, Any]) -> tuple[str, str] | None:
    """(namespace, name) of the credentials Secret of the Experiment's SpecRepository,
    or None when it has none (or the Experiment did not come from one)."""
    value = ((exp["metadata"].get("annotations") or {}).get(api.ANN_SOURCE_SECRET) or "")
    namespace, _, name = value.partition("/")
    return (namespace, name) if namespace and name else None


def secret_problem(exp: dict[str, Any]) -> str | None:
    """Why the training pod could not mount the SpecRepository's Secret, or None."""
    ref = secret_ref(exp)
    meta = exp["metadata"]
    if ref is None or ref[0] == meta["namespace"]:
        return None
    repo = (meta.get("annotations") or {}).get(api.ANN_SOURCE_REPO) or ref[0]
    return (f"the training Job clones the flow's code with the credentials of "
            f"SpecRepository {repo} (Secret {ref[0]}/{ref[1]}), and a pod can only mount "
            f"Secrets of its own namespace ({meta['namespace']}): keep the Experiment in "
            f"namespace {ref[0]}, or sync it from a SpecRepository in {meta['namespace']}")


def pod_secret(exp: dict[str, Any]) -> str | None:
    """The name of the Secret the training pod mounts: the SpecRepository's, when it is
    in the Experiment's namespace (``secret_problem`` reports it otherwise)."""
    ref = secret_ref(exp)
    return ref[1] if ref and ref[0] == exp["metadata"]["namespace"] else None


def init_container(image: str, url: str, commit: str | None, work_dir: str,
                   secret: str | None, security: dict[str, Any]) -> dict[str, Any]:
    """The init container fetching ``commit`` of ``url`` into ``SOURCE_DIR``."""
    env = {"REPO": url, "DIR": SOURCE_DIR, "COMMIT": commit or "HEAD",
           # git and ssh write their config and state under HOME: the pod's scratch,
           # the root being read-only.
           "HOME": work_dir, **git_source.GIT_ENV}
    mounts = [{"name": "source", "mountPath": SOURCE_MOUNT},
              {"name": "work", "mountPath": work_dir}]
    if secret:
        env |= {
            "TRELLIS_GIT_CREDENTIALS": CREDENTIALS_DIR, "TRELLIS_GIT_SECRET": secret,
            "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "credential.helper",
            "GIT_CONFIG_VALUE_0": _HELPER,
            "GIT_SSH_COMMAND": git_source.ssh_command(
                f"{CREDENTIALS_DIR}/{_IDENTITY}", f"{CREDENTIALS_DIR}/{_HOSTS}"),
        }
        mounts.append({"name": CREDENTIALS_VOLUME, "mountPath": CREDENTIALS_DIR,
                       "readOnly": True})
    else:
        env["GIT_SSH_COMMAND"] = git_source.ssh_command()
    return {
        "name": CONTAINER,
        "image": image,
        "command": ["sh", "-c", SCRIPT],
        "env": [{"name": k, "value": v} for k, v in env.items()],
        "resources": CLONE_RESOURCES,
        "securityContext": security,
        "volumeMounts": mounts,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def volumes(secret: str | None) -> list[dict[str, Any]]:
    """The pod's volumes for the clone: the source's, and the Secret's when there is one.

    ``optional``: a Secret deleted after the sync leaves the clone without credentials,
    which fails saying so, rather than a pod waiting for a volume forever."""
    out: list[dict[str, Any]] = [{"name": "source", "emptyDir": {}}]
    if secret:
        out.append({"name": CREDENTIALS_VOLUME,
                    "secret": {"secretName": secret, "defaultMode": CREDENTIALS_MODE,
                               "optional": True}})
    return out
