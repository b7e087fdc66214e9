"""JSON logs: kopf's per-object loggers and ours carry kind/namespace/name as fields."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import kopf
import pytest

from controller.logs import JsonFormatter, object_ref, setup_logging

BODY = {"apiVersion": "mlops.trellis.dev/v1alpha1", "kind": "Experiment",
        "metadata": {"name": "classifier", "namespace": "pumpkins", "uid": "u-1"}}


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Root logging as the operator sets it up, into a buffer."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    setup_logging(fmt="json")
    out = io.StringIO()
    root.handlers[0].setStream(out)  # type: ignore[attr-defined]
    try:
        yield out
    finally:
        root.handlers[:], root.level = saved[0], saved[1]


def records(out: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_kopf_object_logger_lines_name_the_object(captured: io.StringIO) -> None:
    logger = kopf.ObjectLogger(body=kopf.Body(BODY), settings=kopf.OperatorSettings())
    logger.info("Handler %r succeeded.", "experiment_event")
    [rec] = records(captured)
    assert rec["logger"] == "kopf.objects"
    assert rec["msg"] == "Handler 'experiment_event' succeeded."
    assert (rec["kind"], rec["namespace"], rec["name"]) == ("Experiment", "pumpkins", "classifier")
    assert rec["level"] == "info"
    # kopf's bookkeeping (settings object, skip flag, the raw ref) stays out of the line.
    assert not {"settings", "k8s_skip", "k8s_ref"} & set(rec)


def test_local_object_logger_is_formatted_the_same(captured: io.StringIO) -> None:
    logger = kopf.LocalObjectLogger(body=kopf.Body(BODY), settings=kopf.OperatorSettings())
    logger.warning("not posted as an Event")
    [rec] = records(captured)
    assert (rec["kind"], rec["name"], rec["level"]) == ("Experiment", "classifier", "warning")


def test_our_loggers_name_the_object_with_object_ref(captured: io.StringIO) -> None:
    log = logging.getLogger("trellis.test")
    log.info("run started", extra={**object_ref(BODY), "attempt": 2, "path": object()})
    [rec] = records(captured)
    assert (rec["kind"], rec["namespace"], rec["name"]) == ("Experiment", "pumpkins", "classifier")
    assert rec["attempt"] == 2
    assert rec["path"].startswith("<object object")  # unserialisable extras become strings


def test_name_cannot_be_passed_as_a_plain_extra() -> None:
    """Why ``object_ref`` exists: logging refuses an extra that shadows LogRecord.name."""
    with pytest.raises(KeyError, match="name"):
        logging.getLogger("trellis.test").info("x", extra={"name": "classifier"})


def test_exceptions_and_timestamps() -> None:
    log = logging.getLogger("trellis.test")
    try:
        raise ValueError("bad pumpkin")
    except ValueError:
        record = log.makeRecord(log.name, logging.ERROR, __file__, 1, "crashed", (),
                                __import__("sys").exc_info())
    record.created = 0.5
    record.msecs = 500.0
    rec = json.loads(JsonFormatter().format(record))
    assert rec["ts"] == "1970-01-01T00:00:00.500Z"
    assert rec["level"] == "error" and rec["msg"] == "crashed"
    assert "ValueError: bad pumpkin" in rec["exc"]


def test_text_format_is_available(captured: io.StringIO) -> None:
    setup_logging(fmt="text")
    out = io.StringIO()
    logging.getLogger().handlers[0].setStream(out)  # type: ignore[attr-defined]
    logging.getLogger("trellis.test").info("plain")
    assert out.getvalue().rstrip().endswith("INFO trellis.test: plain")


def test_kopf_wake_up_handler_successes_are_debug_lines(captured: io.StringIO) -> None:
    """kopf logs every handler's success at INFO (``f"{handler} succeeded."``); for our
    ``*_event`` wake-ups that is a line per watch event, so they are DEBUG."""
    logger = kopf.ObjectLogger(body=kopf.Body(BODY), settings=kopf.OperatorSettings())
    logger.info("Handler 'experiment_event' succeeded.")
    logger.info("Handler 'experiment_deleted' succeeded.")
    logger.error("Handler 'experiment_event' failed with an exception. Will retry.")
    assert [r["msg"] for r in records(captured)] == [
        "Handler 'experiment_deleted' succeeded.",
        "Handler 'experiment_event' failed with an exception. Will retry."]
    logging.getLogger().setLevel(logging.DEBUG)  # --verbose
    logger.info("Handler 'deployment_event' succeeded.")
    assert records(captured)[-1]["level"] == "debug"
