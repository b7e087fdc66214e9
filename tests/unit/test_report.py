"""The demo report: renders the farm's story, and any part of it, into one offline page."""

from __future__ import annotations

import copy
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.demo.report import write_report
from controller.demo.timeline import read_story
from tests.support.demo_data import demo_data

CRDS = Path(__file__).resolve().parents[2] / "crds"
SECTIONS = ("training", "canary", "drift", "lineage")
FULL = demo_data()


class Page(HTMLParser):
    """What the tests look at: section ids with their <h2> text, image sources, links."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.sections: dict[str, str] = {}
        self.images: dict[str, list[str]] = {}
        self.urls: list[str] = []
        self.nodata: dict[str, int] = {}
        self._section = ""
        self._in_h2 = False
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.urls += [v for k, v in attrs if k in ("src", "href") and v]
        if tag == "section" and a.get("id"):
            self._section = a["id"] or ""
            self.sections[self._section] = ""
            self.images[self._section] = []
        elif tag == "h2":
            self._in_h2 = True
        elif tag == "img":
            self.images.setdefault(self._section, []).append(a.get("src") or "")
        elif tag == "p" and "nodata" in (a.get("class") or ""):
            self.nodata[self._section] = self.nodata.get(self._section, 0) + 1

    def handle_endtag(self, tag: str) -> None:
        self._in_h2 = self._in_h2 and tag != "h2"

    def handle_data(self, data: str) -> None:
        if self._in_h2 and self._section:
            self.sections[self._section] += data


def render(data: dict[str, Any], out: Path) -> tuple[str, Page]:
    page = write_report(data, out)
    assert page == out / "index.html"
    text = page.read_text(encoding="utf-8")
    parsed = Page(text)
    assert set(SECTIONS) <= set(parsed.sections)
    assert all(parsed.sections[s].strip() for s in SECTIONS)
    for sources in parsed.images.values():
        for src in sources:
            assert not Path(src).is_absolute() and (out / src).read_bytes()[:4] == b"\x89PNG"
    assert "http://" not in text and "https://" not in text
    assert all(u.startswith(("#", "img/")) for u in parsed.urls), parsed.urls
    assert "could not be drawn" not in text
    return text, parsed


def test_the_whole_story_renders_with_a_figure_per_section(tmp_path: Path) -> None:
    text, page = render(FULL, tmp_path)
    for section in ("training", "canary", "drift"):
        assert page.images[section] == [f"img/{section}.png"], section
    assert not page.nodata
    assert "it now serves v4." in text
    assert text.count("<tr>") == 1 + 3 + 1 + 6  # rollouts head+rows, lineage head+rows
    assert "rolled back" in text and "objective not met" in text and "run failed" in text
    assert "e5d1f60" in text and "PumpkinFlow/106" in text
    assert "modeldeployment.mlops.trellis.dev/classifier" in text
    size = sum(f.stat().st_size for f in tmp_path.rglob("*") if f.is_file())
    assert size < 600_000, "the page should stay light"


def _without_drift(data: dict[str, Any]) -> dict[str, Any]:
    data = copy.deepcopy(data)
    for sample in data["samples"]:
        sample["deployment"].pop("drift", None)
    data["events"] = [e for e in data["events"] if "Drift" not in e["reason"]]
    return data


def _without_rollouts(data: dict[str, Any]) -> dict[str, Any]:
    data = copy.deepcopy(data)
    for status in [s["deployment"] for s in data["samples"]] + [data["deployment"]["status"]]:
        status.pop("rollouts", None)
        status.pop("canary", None)
    return data


def _garbled(data: dict[str, Any]) -> dict[str, Any]:
    data = copy.deepcopy(data)
    data["samples"][5:5] = ["not a sample", {"t": "later"}, {"t": 1.0, "deployment": []}]
    data["experiment"]["status"]["runs"].insert(0, {"epochs": "none"})
    data["deployment"]["status"]["drift"] = {"features": [{"name": "x", "pValue": None}]}
    data["events"].append({"t": None, "reason": "DriftDetected"})
    data["specrepo"] = None
    return data


@pytest.mark.parametrize(("data", "empty", "says"), [
    pytest.param({}, {*SECTIONS, "kubectl"}, "nothing is serving", id="nothing"),
    pytest.param({**FULL, "samples": [], "events": []}, {"drift"}, "serves v4",
                 id="no-samples"),
    pytest.param(_without_drift(FULL), {"drift"}, "serves v4", id="no-drift"),
    pytest.param(_without_rollouts(FULL), set(), "serves v4", id="no-rollouts"),
    pytest.param(demo_data(stop_at=30), {"training", "canary", "drift"},
                 "The demo stopped early: Level 0", id="stopped-at-0:30"),
    pytest.param(demo_data(rollback=False, stop_at=500), set(),
                 "The demo stopped early: Level 2", id="stopped-at-8:20"),
    pytest.param(_garbled(FULL), set(), "serves v4", id="garbled"),
    pytest.param({"experiment": None, "deployment": None, "specrepo": None, "samples": None,
                  "phases": None, "title": None}, {*SECTIONS, "kubectl"}, "nothing is serving",
                 id="nulls"),
])
def test_partial_stories_render_with_no_data_notes(data: dict[str, Any], empty: set[str],
                                                   says: str, tmp_path: Path) -> None:
    text, page = render(data, tmp_path)
    assert {s for s in page.nodata if s in empty} == empty
    assert says in text


def test_the_story_is_read_into_versions_rollouts_and_drift_moments() -> None:
    story = read_story(FULL)
    assert [(r.pathspec.split("/")[1], r.version, r.reason) for r in story.runs] == [
        ("101", 1, "ModelRegistered"), ("102", 2, "ModelRegistered"),
        ("103", None, "ObjectiveNotMet"), ("104", 3, "ModelRegistered"),
        ("105", None, "RunFailed"), ("106", 4, "ModelRegistered")]
    assert [(r.version, r.outcome, r.analyses) for r in story.rollouts] == [
        (2, "promoted", 4), (3, "rolledBack", 1), (4, "promoted", 3)]
    assert story.drift_threshold == pytest.approx(0.005)
    assert [(m.kind, m.t) for m in story.markers] == [
        ("promoted", 260), ("rolledBack", 410), ("detected", 450), ("retrain", 451),
        ("promoted", 645), ("cleared", 650)]
    assert (story.stable_now, story.canary_now, sorted(story.rejected)) == (4, None, [3])


def test_markup_from_the_recording_is_escaped(tmp_path: Path) -> None:
    data = {"title": "<script>alert(1)</script> farm", "kubectl_get_mlops": "NAME <b>x</b>",
            "phases": [{"name": "<i>", "seconds": 1, "ok": False}]}
    text, _ = render(data, tmp_path)
    assert "<script>" not in text and "<i>" not in text
    assert "&lt;script&gt;" in text and "&lt;b&gt;x" in text


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The CRD schema, closed: unknown keys fail, as the API server would prune them."""
    out = {k: v for k, v in schema.items() if not k.startswith("x-kubernetes")}
    if "properties" in out:
        out["properties"] = {k: _strict(v) for k, v in out["properties"].items()}
        out.setdefault("additionalProperties", False)
    if isinstance(out.get("items"), dict):
        out["items"] = _strict(out["items"])
    return out


@pytest.mark.parametrize("kind", ["experiment", "deployment", "specrepo"])
def test_the_fixture_uses_only_fields_the_crds_define(kind: str) -> None:
    import jsonschema

    crd = {"experiment": "experiments", "deployment": "modeldeployments",
           "specrepo": "specrepositories"}[kind]
    doc = yaml.safe_load((CRDS / f"{crd}.yaml").read_text())
    schema = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    statuses = [FULL[kind]["status"]]
    if kind != "specrepo":
        statuses += [s[kind] for s in FULL["samples"][::25]]
    for status in statuses:
        jsonschema.validate(status, _strict(schema))


# ------------------------------------------------------------------------ modes
def _cluster_story() -> dict[str, Any]:
    """A cluster-mode recording: v1 trained in a pod, no ModelDeployment, the facts the
    cluster demo collects."""
    from controller.demo.cluster import cluster_parts

    data = copy.deepcopy(demo_data(stop_at=120))
    data["deployment"] = None
    for sample in data["samples"]:
        sample["deployment"] = {}
    data["phases"] = [{"name": "Level 0 — train in a pod, model to S3, a failover",
                       "seconds": 90, "ok": True}]
    run = data["experiment"]["status"]["runs"][0]["pathspec"]
    failover = {"deleted": "trellis-operator-a", "new_active": "trellis-operator-b",
                "took_over_after_s": 61.5}
    prefix = f"metaflow/models/{run}"
    data.update(mode="cluster", parts=cluster_parts(failover), cluster={
        "operator_pods": ["trellis-operator-a", "trellis-operator-b"], "failover": failover,
        "runs": 1, "jobs": [{"name": "classifier-g1-a1", "succeeded": 1}],
        "pods": [{"name": "classifier-g1-a1-x7k2q", "phase": "Succeeded",
                  "image": "ghcr.io/trellis-mlops/trainer:0.1.0", "node": "trellis-node",
                  "requests": {"cpu": "1", "memory": "3Gi"}}],
        "model": {"version": 1, "run": run, "accuracy": 0.964, "commit": "3f2a9c1d",
                  "artifactUri": f"s3://trellis/{prefix}"},
        "s3": {"bucket": "trellis", "prefix": prefix, "datastore_objects": 31,
               "objects": [{"key": f"{prefix}/{n}", "size": 1000 + i}
                           for i, n in enumerate(("meta.json", "model.pt"))]},
        "kubectl_get_pods": "NAMESPACE  NAME\npumpkins   classifier-g1-a1-x7k2q\n"})
    return data


def test_a_cluster_story_says_its_mode_what_ran_and_what_did_not(tmp_path: Path) -> None:
    from controller.demo.report import write_markdown

    data = _cluster_story()
    text, page = render(data, tmp_path)
    assert "cluster mode</p>" in text and page.sections["where"].strip().endswith("cluster mode")
    # canary and drift: not run, and why — never an empty figure passed off as no data
    assert page.nodata["canary"] == page.nodata["drift"] == 1
    assert not page.images.get("canary") and not page.images.get("drift")
    assert text.count("Seldon Core&#x27;s operator") >= 2
    assert "serving did not run" in text and "nothing is serving" not in text
    assert text.count('class="badge failed">not run') == 3
    assert "trellis-operator-b</code> took over after 1 min 02 s" in text
    assert f"s3://trellis/{data['cluster']['s3']['prefix']}/model.pt" in text
    assert "$ kubectl get pods -A" in text and "0.964" in text
    md = write_markdown(data, tmp_path).read_text()
    assert "Mode: **cluster**" in md and "| serving | no |" in md and "| training | yes |" in md
    assert "- failover: trellis-operator-a force-deleted mid-run" in md
    assert f"- S3: s3://trellis/{data['cluster']['s3']['prefix']}/model.pt (1001 bytes)" in md


def test_a_local_story_says_local_mode_and_everything_ran(tmp_path: Path) -> None:
    from controller.demo.main import LOCAL_PARTS
    from controller.demo.report import write_markdown

    data = {**FULL, "mode": "local", "parts": LOCAL_PARTS}
    text, page = render(data, tmp_path)
    assert "local mode</p>" in text and "not run" not in text
    assert page.images["canary"] == ["img/canary.png"]
    md = write_markdown(data, tmp_path).read_text()
    assert "Mode: **local**" in md and "| serving | yes |" in md and "## Cluster" not in md
    assert "| PumpkinFlow/106 | v4 |" in md
