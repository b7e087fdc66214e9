"""The model server's answers to predictions; run with the serving environment's Python.

Node tests that play Seldon's executor (no Seldon Core operator runs here) need what a
real model-server pod would answer, drift features included. This script loads the
project's own Seldon model class (``serving/PumpkinModel.py``) from ``MODEL_URI`` as
seldon-core-microservice does, and answers each request with its ``predict_raw``::

    MODEL_URI=/dir/1 python pumpkin_answers.py < requests.json > responses.json

stdin: a JSON list of Seldon messages; stdout: a JSON list of the answers, in order.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "serving"))
    from PumpkinModel import PumpkinModel

    model = PumpkinModel()
    model.load()
    answers = [model.predict_raw(message) for message in json.load(sys.stdin)]
    json.dump(answers, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
