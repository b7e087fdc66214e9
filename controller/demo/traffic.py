"""The townsfolk: live traffic for the demo and the end-to-end tests.

They photograph pumpkins (orange, later white genetically modified ones), ask the
Seldon REST endpoint what it thinks, and — like a farmer who later learns which
pumpkins were bad — send the ground truth back through Seldon's feedback endpoint.
Plain threads and urllib: this is a client, not part of the operator.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from controller.paths import FLOWS_DIR


def _pumpkin_data():
    if str(FLOWS_DIR) not in sys.path:
        sys.path.insert(0, str(FLOWS_DIR))
    import pumpkin_data

    return pumpkin_data


@dataclass
class Tally:
    requests: Counter[tuple[str, int]] = field(default_factory=Counter)  # (predictor, code)
    correct: Counter[str] = field(default_factory=Counter)  # predictor, and "vN" -> right
    answered: Counter[str] = field(default_factory=Counter)  # predictor, and "vN" -> answers
    feedback: Counter[int] = field(default_factory=Counter)  # code -> count

    def accuracy(self, predictor: str) -> float | None:
        n = self.answered[predictor]
        return self.correct[predictor] / n if n else None


class Townsfolk(threading.Thread):
    """Sends ``batch`` photos per request, ``rate`` requests a second, until stopped."""

    def __init__(self, endpoint: str, *, batch: int = 4, rate: float = 5.0, seed: int = 0,
                 feedback: bool = True, token: str | None = None, timeout: float = 15.0):
        super().__init__(daemon=True, name="townsfolk")
        self.endpoint = endpoint
        self.feedback_url = endpoint.replace("/predictions", "/feedback")
        self.batch, self.rate, self.seed = batch, rate, seed
        self.send_feedback, self.token, self.timeout = feedback, token, timeout
        self.tally = Tally()
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._photos: Any = None
        self.set_mix("orange")

    def set_mix(self, variety: str, white_fraction: float = 0.5) -> None:
        """What the farm grows now: ``orange``, ``white`` or ``mixed``."""
        data = _pumpkin_data().generate(
            512, seed=self.seed, variety=variety, white_fraction=white_fraction)
        keep = data.y >= 0  # the townsfolk know a watermelon when they see one
        with self._lock:
            self._photos = (data.x[keep].round(3), data.y[keep])
            self.seed += 1

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=30)

    def run(self) -> None:
        i = 0
        while not self._halt.is_set():
            started = time.monotonic()
            with self._lock:
                x, y = self._photos
            j = (i * self.batch) % (len(x) - self.batch)
            self._ask(x[j:j + self.batch], y[j:j + self.batch])
            i += 1
            self._halt.wait(max(0.0, 1.0 / self.rate - (time.monotonic() - started)))

    def _ask(self, images, labels) -> None:
        body = json.dumps({"data": {"ndarray": images.tolist()}}).encode()
        code, answer = self._post(self.endpoint, body)
        meta = answer.get("meta") or {}
        path = meta.get("requestPath") or {"?": ""}
        predictor = next(iter(path))
        version = str(path[predictor]).rsplit(":", 1)[-1]  # "<ns>/<name>:vN"
        self.tally.requests[(predictor, code)] += 1
        if code != 200:
            return
        probs = (answer.get("data") or {}).get("ndarray") or []
        predicted = [int(p[1] > p[0]) for p in probs]
        right = sum(int(a == b) for a, b in zip(predicted, labels, strict=False))
        for key in (predictor, version):
            self.tally.answered[key] += len(predicted)
            self.tally.correct[key] += right
        if self.send_feedback and meta.get("puid"):
            truth = {"response": {"meta": {"puid": meta["puid"]}},
                     "truth": {"data": {"ndarray": [int(v) for v in labels]}}}
            fcode, _ = self._post(self.feedback_url, json.dumps(truth).encode())
            self.tally.feedback[fcode] += 1

    def _post(self, url: str, body: bytes) -> tuple[int, dict[str, Any]]:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            with urllib.request.urlopen(urllib.request.Request(url, body, headers),
                                        timeout=self.timeout) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            try:
                return exc.code, json.loads(exc.read() or b"{}")
            except ValueError:
                return exc.code, {}
        except (OSError, ValueError):
            return 0, {}
