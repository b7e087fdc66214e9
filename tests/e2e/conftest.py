"""Seldon mode's metrics, for real: a Prometheus per test, the model versions a canary
rolls between, what a SeldonDeployment's pods would run, and the ingress in front of them.

Request ``prometheus`` before ``operator`` (it sets ``TRELLIS_PROMETHEUS_URL`` and the
label scheme for the operator to read when it starts). ``namespace_label`` is the label
the scrape puts the namespace in; a test parametrizes it to check another scheme.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fake_model import make_images, payload, write_model_version
from tests.support.prometheus import Prometheus
from tests.support.seldon_host import SERVING_PYTHON, Ingress, SeldonHost


@pytest.fixture
def namespace_label() -> str:
    return "namespace"  # a PodMonitor's and the kubernetes-pods job's (the default)


@pytest.fixture
def prometheus(tmp_path: Path, namespace_label: str,
               monkeypatch: pytest.MonkeyPatch) -> Iterator[Prometheus]:
    prom = Prometheus(tmp_path / "prometheus").start()
    monkeypatch.setenv("TRELLIS_PROMETHEUS_URL", prom.url)
    monkeypatch.setenv("TRELLIS_PROMETHEUS_NAMESPACE_LABEL", namespace_label)
    try:
        yield prom
    finally:
        prom.stop()


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


@pytest.fixture(scope="module")
def request_bodies() -> list[bytes]:
    """Prediction bodies of one image each, good and bad pumpkins taking turns: the few
    requests a 10% canary gets in a window hold both classes as the stable's many do
    (a random mix would let the class-shift check fail a good canary on a small sample)."""
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
