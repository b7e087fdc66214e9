"""Seldon mode's metrics, for real: the model versions a canary rolls between and what a
SeldonDeployment's pods would run, as processes on this host (``tests/conftest.py`` has
the Prometheus and the ingress, shared with the node tests' pods).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fake_model import write_model_version
from tests.support.prometheus import Prometheus
from tests.support.seldon_host import SERVING_PYTHON, Ingress, SeldonHost


@pytest.fixture(scope="module")
def seldon_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Versions as training leaves them, by number: v1 and v2 good, v3 failing about half
    its inputs (a model bug its server answers with 500). v4 has none: its pods never
    come up."""
    if not (SERVING_PYTHON.parent / "seldon-core-microservice").exists():
        pytest.skip(f"serving environment missing: create {SERVING_PYTHON.parent.parent}")
    root = tmp_path_factory.mktemp("seldon-models")
    write_model_version(root / "1")
    write_model_version(root / "2", seed=1)
    write_model_version(root / "3", fail_fraction=0.5)
    return root


@pytest.fixture
def seldon_host(tmp_path: Path, prometheus: Prometheus, seldon_models: Path,
                namespace: str, namespace_label: str,
                ingress: Ingress) -> Iterator[SeldonHost]:
    host = SeldonHost(tmp_path / "seldon-host", prometheus, seldon_models, namespace,
                      namespace_label=namespace_label, ingress=ingress)
    try:
        yield host
    finally:
        host.close()
