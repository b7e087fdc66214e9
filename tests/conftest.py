"""Shared fixtures: one real control plane per test session, an operator per test.

The dev cluster is the same code as ``trellis dev-cluster up`` (envtest-style
etcd + kube-apiserver); ``KUBEBUILDER_ASSETS`` is honoured. Each test works in its own
namespace and runs the operator for that namespace only, so tests never see each
other's objects.

Nothing outlives the session: the local-mode processes an operator starts (detached on
purpose) are stopped with the test's state dir, and a check at the end of the session
fails the run naming anything of it still running (``tests/support/leftovers.py``).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller import localwork
from controller.devcluster.cluster import DevCluster
from tests.support import leftovers
from tests.support.kube import Cluster
from tests.support.prometheus import Prometheus
from tests.support.seldon_host import Ingress

os.environ.setdefault("METAFLOW_USER", "trellis-tests")
_BASETEMP = pytest.StashKey[Path]()


@pytest.fixture(scope="session", autouse=True)
def _session_env(tmp_path_factory: pytest.TempPathFactory,
                 pytestconfig: pytest.Config) -> Iterator[None]:
    """What the session's processes write outside their tests' dirs goes under its temp
    root, noted for the leftover check: operators record their state dirs in a registry
    of its own (not the user's, which `trellis dev-cluster down` reads), and torch keeps
    its compile cache there rather than in TMPDIR."""
    base = tmp_path_factory.getbasetemp()
    pytestconfig.stash[_BASETEMP] = base
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRELLIS_REGISTRY_DIR", str(tmp_path_factory.mktemp("operator-registry")))
        patch.setenv("TORCHINDUCTOR_CACHE_DIR", str(base / "torchinductor"))
        yield


@pytest.hookimpl(trylast=True)  # after the session's fixtures are torn down, even on ^C
def pytest_sessionfinish(session: pytest.Session) -> None:
    """Fail the run if anything that references the session's temp root still runs (or
    is mounted there), naming it; then stop it, so one failed run does not slow the next."""
    base = session.config.stash.get(_BASETEMP, None)
    if base is None:
        return
    found = leftovers.check([base])
    if not found:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = ["left by this test session (stopped now; the run fails):", *found.lines()]
    if reporter is not None:
        reporter.write("\n")
        reporter.write_sep("=", "leftovers", red=True)
        for line in lines:
            reporter.write_line(line, red=True)
    else:
        print(*lines, sep="\n")
    localwork.terminate(found.processes)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def dev_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    dev = DevCluster(tmp_path_factory.mktemp("dev-cluster"))
    dev.up()
    try:
        yield dev
    finally:
        dev.down()


@pytest.fixture(scope="session")
def cluster(dev_cluster: DevCluster) -> Cluster:
    return Cluster(dev_cluster)


@pytest.fixture(scope="session")
def operator_kubeconfig(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Operators under test authenticate as the manifests' ServiceAccount, bound only to
    the manifests' RBAC — never as admin — so every end-to-end test also checks RBAC."""
    from tests.support.clusterwide import pick, render, service_account_kubeconfig

    docs = render(cluster)
    rbac = [d for kind in ("Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding")
            for d in pick(docs, kind)]
    cluster.kubectl("apply", "-f", "-", input=json.dumps(
        {"apiVersion": "v1", "kind": "List", "items": rbac}))
    sa = pick(docs, "ServiceAccount", "trellis-operator")[0]["metadata"]
    path = tmp_path_factory.mktemp("operator-identity") / "kubeconfig"
    return str(service_account_kubeconfig(cluster, sa["name"], sa["namespace"], path))


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> str:
    base = request.node.name.lower().replace("_", "-")[:40].strip("-")
    name = f"{base}-{uuid.uuid4().hex[:5]}"
    return cluster.create_namespace("".join(c for c in name if c.isalnum() or c == "-"))


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    """The operator's state dir. Afterwards, what the operator started from it is
    stopped: local serving and training processes are detached on purpose (they outlive
    an operator restart), so stopping the operator stops none of them. The operator
    fixtures depend on this one, so this runs after they stopped the operator (nothing
    restarts what is stopped), and also when the test failed midway."""
    path = tmp_path / "state"
    path.mkdir()
    yield path
    localwork.stop(path)


@pytest.fixture
def operator_env(operator_kubeconfig: str, state_dir: Path, monkeypatch: pytest.MonkeyPatch
                 ) -> dict[str, str]:
    """Environment of an operator under test (also applied to this process)."""
    env = {
        "KUBECONFIG": operator_kubeconfig,
        "TRELLIS_STATE_DIR": str(state_dir),
        "TRELLIS_RESYNC_SECONDS": "5",
        "TRELLIS_METRICS_PORT": "0",  # a free port each: parallel sessions never collide
        "TRELLIS_REQUEST_LOGGER_PORT": "0",
        "TRELLIS_WEBHOOK_PORT": os.environ.get("TRELLIS_WEBHOOK_PORT", "0"),
        "TRELLIS_LOG_FORMAT": "text",
        "METAFLOW_USER": "trellis-tests",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def operator(operator_env: dict[str, str], namespace: str) -> Iterator[None]:
    """The operator in-process (kopf's KopfRunner), watching this test's namespace."""
    import kopf
    from kopf.testing import KopfRunner

    settings = kopf.OperatorSettings()
    settings.scanning.disabled = True  # as `trellis operator` does: the role reads no CRDs
    args = ["run", "--standalone", "-n", namespace, "-m", "controller.handlers"]
    with KopfRunner(args, timeout=60, settings=settings) as runner:
        yield
    assert runner.exception is None, runner.exception


# ------------------------------------------------- Seldon's metrics, for real
# Request ``prometheus`` before ``operator``: it sets ``TRELLIS_PROMETHEUS_URL`` and the
# label scheme for the operator to read when it starts. ``namespace_label`` is the label
# the scrape puts the namespace in; a test parametrizes it to check another scheme.

@pytest.fixture
def namespace_label() -> str:
    return "namespace"  # a PodMonitor's and the kubernetes-pods job's (the default)


@pytest.fixture
def prometheus(tmp_path: Path, namespace_label: str,
               monkeypatch: pytest.MonkeyPatch) -> Iterator[Prometheus]:
    prom = Prometheus(tmp_path / "prometheus", namespace_label=namespace_label).start()
    monkeypatch.setenv("TRELLIS_PROMETHEUS_URL", prom.url)
    monkeypatch.setenv("TRELLIS_PROMETHEUS_NAMESPACE_LABEL", namespace_label)
    try:
        yield prom
    finally:
        prom.stop()


@pytest.fixture(scope="module")
def request_bodies() -> list[bytes]:
    """Prediction bodies of one image each, good and bad pumpkins taking turns: the few
    requests a 10% canary gets in a window hold both classes as the stable's many do
    (a random mix would let the class-shift check fail a good canary on a small sample)."""
    from tests.support.fake_model import make_images, payload

    good, bad = make_images(16, good=True, seed=7), make_images(16, good=False, seed=8)
    images = [image for pair in zip(good, bad, strict=True) for image in pair]
    return [json.dumps(payload(image[None])).encode() for image in images]


@pytest.fixture
def ingress(request_bodies: list[bytes]) -> Iterator[Ingress]:
    """Not started: a test starts (and pauses) the stream when its story needs it.
    Every second successful prediction is followed by feedback to the same predictor."""
    stream = Ingress(request_bodies, rate=20.0, feedback_every=2)
    try:
        yield stream
    finally:
        stream.stop()
