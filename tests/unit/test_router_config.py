"""The router's pure parts: config parsing, weighted choice, auth, feedback forms."""

from __future__ import annotations

import os
import random
import stat
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller.serving.router_config import (
    DEFAULT_MAX_BODY_BYTES,
    Auth,
    ConfigError,
    FeedbackError,
    Predictor,
    RouterConfig,
    TokenFile,
    bearer,
    check_bearer,
    choose,
    client_puid,
    images_uint8,
    parse_config,
    parse_feedback,
    predicted_classes,
    read_config,
    write_atomic,
    write_config,
)


def _doc(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "deployment": "farm/pumpkins",
        "predictors": [
            {"name": "stable", "version": 1, "url": "http://127.0.0.1:9001/", "weight": 90},
            {"name": "canary", "version": 2, "url": "http://127.0.0.1:9002", "weight": 10},
        ],
        "log_dir": "/tmp/log",
        "max_log_bytes": 1000,
        "auth_token_file": None,
        "max_body_bytes": 2048,
    }
    doc.update(overrides)
    return doc


def test_parse_valid_config() -> None:
    config = parse_config(_doc())
    assert config.deployment == "farm/pumpkins"
    assert config.predictors[0] == Predictor("stable", 1, "http://127.0.0.1:9001", 90)
    assert config.log_dir == Path("/tmp/log") and config.max_log_bytes == 1000
    assert config.auth_token_file is None and config.max_body_bytes == 2048
    assert config.timeout_s == 10.0


def test_defaults_when_optional_fields_are_absent() -> None:
    doc = _doc(log_dir=None)
    del doc["max_body_bytes"], doc["max_log_bytes"], doc["auth_token_file"]
    config = parse_config(doc)
    assert config.max_body_bytes == DEFAULT_MAX_BODY_BYTES
    assert config.log_dir is None and config.auth_token_file is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"deployment": "pumpkins"}, "namespace/name"),
        ({"predictors": {}}, "predictors must be a list"),
        ({"colour": "orange"}, "unknown config keys: colour"),
        ({"max_log_bytes": 0}, "max_log_bytes must be an integer >= 1"),
        ({"max_body_bytes": 10}, "max_body_bytes must be an integer >= 1024"),
        ({"timeout_s": 0}, "timeout_s must be a positive number"),
        ({"log_dir": ""}, "log_dir must be a path or null"),
        (
            {"predictors": [{"name": "Stable", "version": 1, "url": "http://x", "weight": 1}]},
            "name must be a DNS label",
        ),
        (
            {"predictors": [{"name": "a", "version": True, "url": "http://x", "weight": 1}]},
            r"predictors\[0\].version must be an integer",
        ),
        (
            {"predictors": [{"name": "a", "version": 1, "url": "http://x", "weight": -1}]},
            r"predictors\[0\].weight must be an integer >= 0",
        ),
        (
            {"predictors": [{"name": "a", "version": 1, "url": "ftp://x", "weight": 1}]},
            "url must be an http",
        ),
        (
            {"predictors": [{"name": "a", "version": 1, "url": "http://x", "weight": 1, "w": 1}]},
            "must be an object with name, version, url, weight",
        ),
        (
            {"predictors": [{"name": "a", "version": 1, "url": "http://x", "weight": 1}] * 2},
            "unique",
        ),
    ],
)
def test_invalid_configs_name_the_field(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(_doc(**overrides))


def test_write_then_read_round_trips_with_the_same_revision(tmp_path: Path) -> None:
    config = parse_config(_doc())
    path = tmp_path / "sub" / "router.json"
    revision = write_config(path, config)
    again, read_revision = read_config(path)
    assert again == config and read_revision == revision
    assert write_config(path, config) == revision  # same content, same revision
    assert not [p for p in path.parent.iterdir() if p.name != "router.json"]  # no temp left


def test_read_config_reports_bad_json(tmp_path: Path) -> None:
    path = tmp_path / "router.json"
    path.write_text("{nope")
    with pytest.raises(ConfigError, match="not JSON"):
        read_config(path)


def test_write_atomic_sets_the_mode(tmp_path: Path) -> None:
    path = tmp_path / "token"
    write_atomic(path, b"secret", mode=0o600)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and path.read_bytes() == b"secret"


def test_choose_follows_weights_and_is_deterministic_under_a_seed() -> None:
    predictors = parse_config(_doc()).predictors
    rng = random.Random(1)
    picks = Counter(p.name for p in (choose(predictors, rng) for _ in range(10_000)) if p)
    assert 850 <= picks["canary"] <= 1150 and picks["stable"] + picks["canary"] == 10_000
    rng_a, rng_b = random.Random(9), random.Random(9)
    seq_a = [choose(predictors, rng_a) for _ in range(50)]
    seq_b = [choose(predictors, rng_b) for _ in range(50)]
    assert seq_a == seq_b and len({p.name for p in seq_a if p}) == 2


def test_choose_skips_zero_weights() -> None:
    only = (Predictor("stable", 1, "http://a", 0), Predictor("canary", 2, "http://b", 5))
    assert {choose(only, random.Random(i)).name for i in range(50)} == {"canary"}
    assert choose((Predictor("stable", 1, "http://a", 0),), random.Random(0)) is None
    assert choose((), random.Random(0)) is None


@pytest.mark.parametrize(
    ("header", "token", "verdict"),
    [
        (None, None, Auth.OK),
        ("anything", None, Auth.OK),
        (None, "s3cret", Auth.MISSING),
        ("", "s3cret", Auth.MISSING),
        ("Basic czNjcmV0", "s3cret", Auth.MISSING),
        ("Bearer ", "s3cret", Auth.MISSING),
        ("Bearer wrong", "s3cret", Auth.WRONG),
        ("Bearer s3cret-and-more", "s3cret", Auth.WRONG),
        ("Bearer s3cret", "s3cret", Auth.OK),
        ("bearer  s3cret ", "s3cret", Auth.OK),
        ("Bearer s3cret\udce9", "s3cret", Auth.WRONG),  # a header byte that is not UTF-8
        ("Bearer s3cr\u00e9t", "s3cret", Auth.WRONG),
    ],
)
def test_check_bearer(header: str | None, token: str | None, verdict: Auth) -> None:
    assert check_bearer(header, token) is verdict


def test_seldon_clients_token_header_counts_as_a_bearer_token() -> None:
    """SeldonClient's SeldonCallCredentials(token=...) sends X-Auth-Token."""
    assert check_bearer(bearer({"X-Auth-Token": "s3cret"}), "s3cret") is Auth.OK
    assert check_bearer(bearer({"X-Auth-Token": "wrong"}), "s3cret") is Auth.WRONG
    assert bearer({"Authorization": "Bearer a", "X-Auth-Token": "b"}) == "Bearer a"
    assert bearer({}) is None


@pytest.mark.parametrize(("header", "kept"), [
    ("c0ffee-42", True), ("a" * 128, True), ("req:7.b_x", True),
    (None, False), ("", False), ("a" * 129, False), ("../etc", False), ("a b", False),
    ("caf\u00e9", False),
])
def test_a_puid_the_client_sends_is_kept_when_the_log_can_key_on_it(
        header: str | None, kept: bool) -> None:
    assert client_puid(header) == (header if kept else None)


def test_token_file_follows_rotation(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("one\n")
    tokens = TokenFile(path)
    assert tokens.token() == "one"
    write_atomic(path, b"two-longer", mode=0o600)
    assert tokens.token() == "two-longer"
    path.write_text("")
    with pytest.raises(ValueError, match="empty"):
        tokens.token()
    path.unlink()
    with pytest.raises(OSError):
        tokens.token()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"puid": "p1", "label": 1}, ("p1", [1])),
        ({"puid": "p1", "label": "bad"}, ("p1", [0])),
        ({"puid": "p1", "labels": [0, "good", [0, 1]]}, ("p1", [0, 1, 1])),
        ({"response": {"meta": {"puid": "p2"}}, "truth": {"data": {"ndarray": [1]}}}, ("p2", [1])),
        (
            {"response": {"meta": {"puid": "p2"}}, "truth": {"data": {"ndarray": [[1], [0]]}}},
            ("p2", [1, 0]),
        ),
        (
            {"response": {"meta": {"puid": "p2"}}, "truth": {"data": {"ndarray": [[1, 0]]}}},
            ("p2", [0]),
        ),
        # SeldonClient's forms: numbers are doubles, truth may be a tensor
        ({"response": {"meta": {"puid": "p3"}}, "truth": {"data": {"ndarray": [[1.0]]}}},
         ("p3", [1])),
        (
            {"response": {"meta": {"puid": "p3"}},
             "truth": {"data": {"tensor": {"shape": [2], "values": [1.0, 0.0]}}}},
            ("p3", [1, 0]),
        ),
        (
            {"response": {"meta": {"puid": "p3"}},
             "truth": {"data": {"tensor": {"shape": [2, 1], "values": [0, 1]}}}},
            ("p3", [0, 1]),
        ),
        (
            {"response": {"meta": {"puid": "p3"}},
             "truth": {"data": {"tensor": {"shape": [2, 2], "values": [0.0, 1.0, 1.0, 0.0]}}}},
            ("p3", [1, 0]),
        ),
    ],
)
def test_parse_feedback_forms(body: dict[str, Any], expected: tuple[str, list[int]]) -> None:
    assert parse_feedback(body) == expected


@pytest.mark.parametrize("body", [
    {"reward": 1.0},
    {"response": {"meta": {"puid": "p"}}, "reward": -1},
    {"request": {"data": {"ndarray": [[1]]}}, "response": {"meta": {"puid": "p"}},
     "truth": None, "reward": None},
])
def test_seldon_feedback_without_truth_is_a_reward_only(body: dict[str, Any]) -> None:
    assert parse_feedback(body) is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([1], "JSON object"),
        ({"puid": "p"}, 'needs "label"'),
        ({"puid": "p", "label": 2}, "invalid label 2"),
        ({"puid": "p", "label": True}, "invalid label True"),
        ({"puid": "p", "label": 0.5}, "invalid label"),
        ({"puid": "p", "label": [1, 1]}, "invalid label"),
        ({"puid": "p", "labels": []}, "non-empty"),
        ({"puid": 7, "label": 1}, "puid must be"),
        ({"truth": {"data": {"ndarray": [1]}}}, "response.meta.puid"),
        ({}, "response.meta.puid"),
        ({"reward": "x"}, "reward must be a number"),
        ({"reward": True, "response": {"meta": {"puid": "p"}}}, "reward must be a number"),
        ({"response": [1], "reward": 1}, "response must be"),
        ({"response": {"meta": {"puid": "p"}}, "truth": {}}, "truth.data.ndarray"),
        ({"response": {"meta": {"puid": "p"}},
          "truth": {"data": {"tensor": {"shape": [3], "values": [1, 0]}}}}, "truth.data.tensor"),
        ({"response": {"meta": {"puid": "p"}},
          "truth": {"data": {"tensor": {"shape": [1, 1, 1], "values": [1]}}}}, "shape"),
        ({"response": {"meta": {"puid": "p"}},
          "truth": {"data": {"tensor": {"shape": [10**30], "values": [1]}}}}, "shape"),
        ({"response": {"meta": {"puid": "p"}},
          "truth": {"data": {"tensor": {"shape": [1], "values": [0.5]}}}}, "invalid label"),
    ],
)
def test_parse_feedback_errors(body: Any, message: str) -> None:
    with pytest.raises(FeedbackError, match=message):
        parse_feedback(body)


def test_predicted_classes_prefers_the_model_tag() -> None:
    answer = {"data": {"names": ["bad", "good"], "ndarray": [[0.9, 0.1], [0.2, 0.8]]}}
    assert predicted_classes(answer, {}) == [0, 1]
    assert predicted_classes(answer, {"trellis.predictions": [1, 1]}) == [1, 1]
    tensor = {"data": {"tensor": {"shape": [1, 2], "values": [0.3, 0.7]}}}
    assert predicted_classes(tensor, {}) == [1]
    assert predicted_classes({"data": {"ndarray": "junk"}}, {}) == []


def test_images_uint8_rounds_and_reshapes() -> None:
    img = np.full((1, 64, 64, 3), 0.5, dtype=np.float32)
    img[0, 0, 0] = [0.0, 1.0, 0.999]
    for body in (
        {"data": {"ndarray": img.tolist()}},
        {"data": {"tensor": {"shape": [1, 64, 64, 3], "values": img.ravel().tolist()}}},
    ):
        x = images_uint8(body)
        assert x.dtype == np.uint8 and x.shape == (1, 64, 64, 3)
        assert x[0, 0, 0].tolist() == [0, 255, 255] and x[0, 1, 1, 0] == 128


def test_config_to_json_is_parseable() -> None:
    config = RouterConfig("a/b", (Predictor("stable", 3, "http://h:1", 100),))
    assert parse_config(config.to_json()) == config
