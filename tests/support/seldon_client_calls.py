"""Seldon's own client against an endpoint; run with the serving environment's Python.

seldon-core 1.17.1 cannot be imported next to kopf, so e2e tests run this script with
``.venv-serving/bin/python`` and read one JSON report from stdout::

    python seldon_client_calls.py HOST:PORT NAMESPACE NAME IMAGES.npy LABELS.json

For each gateway (seldon, ambassador, istio) and payload type (ndarray, tensor) it
predicts, then sends feedback with the prediction's request and response and the truth
in the same payload type, exactly as a Seldon user's code would, and then feedback with
a reward and no truth.
"""

from __future__ import annotations

import json
import sys

import numpy as np
from google.protobuf import json_format
from seldon_core.proto import prediction_pb2
from seldon_core.seldon_client import SeldonClient
from seldon_core.utils import array_to_grpc_datadef


def _dict(message: object) -> object:
    return None if message is None else json_format.MessageToDict(message)


def main() -> int:
    endpoint, namespace, name, images_path, labels_json = sys.argv[1:6]
    images = np.load(images_path)
    labels = np.asarray(json.loads(labels_json), dtype=np.float64)
    report = []
    for gateway in ("seldon", "ambassador", "istio"):
        client = SeldonClient(gateway=gateway, transport="rest", gateway_endpoint=endpoint,
                              deployment_name=name, namespace=namespace,
                              client_return_type="proto")  # feedback takes the protos back
        for kind in ("ndarray", "tensor"):
            predicted = client.predict(data=images, payload_type=kind)
            entry = {"gateway": gateway, "kind": kind, "success": predicted.success,
                     "msg": predicted.msg, "response": _dict(predicted.response)}
            if predicted.success:
                truth = prediction_pb2.SeldonMessage(data=array_to_grpc_datadef(kind, labels))
                fed = client.feedback(prediction_request=predicted.request,
                                      prediction_response=predicted.response,
                                      prediction_truth=truth, reward=1.0)
                entry["feedback"] = {"success": fed.success, "msg": fed.msg,
                                     "response": _dict(fed.response)}
                rewarded = client.feedback(prediction_request=predicted.request,
                                           prediction_response=predicted.response, reward=0.5)
                entry["reward_only"] = {"success": rewarded.success, "msg": rewarded.msg}
            report.append(entry)
    json.dump(report, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
