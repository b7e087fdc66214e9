"""Training through the operator vs plain PyTorch, and serving latency three ways.

1. Training: the example Experiment applied to a real dev cluster with the operator
   running, timed from apply to Succeeded, against ``bench/baseline_train.py`` on the
   same data (same seed, photos and epochs) — the ratio is what Trellis + Metaflow cost.
2. Serving, side by side in one run with the model that training produced: requests
   through the router + Seldon wrapper, straight to the Seldon wrapper, and the bare
   TorchScript forward in-process (p50, p99, requests/s; overhead ratios); and one photo
   sent as ``binData`` PNG against the same photo as ``ndarray`` JSON (body bytes, p50,
   p99, through the router and direct).
3. Serving under load (``bench/loadgen.py``): the binData photo at 1, 8 and 32 connections
   against the router and the model server directly (req/s, p50, p99, medians over
   repeats); and 32 photos in one ``data.tensor`` request against the same 32 photos as
   32 binData requests one after another (p50 per request and per photo).

``--serving-only`` skips training (and the dev cluster) and serves an untrained
``PumpkinNet`` exported as training exports it: the latency figures are the same, the
answers are not meaningful.

Prints JSON rows ``{"name","value","unit","baseline","baseline_value","ratio","notes"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import loadgen  # noqa: E402
from bench.rows import emit, row  # noqa: E402
from controller.devcluster.cluster import DevCluster  # noqa: E402

PARAMS = {"seed": 7, "epochs": 4, "lr": 0.003, "variety": "orange"}
BATCH = 32  # photos in the batch row's one request



def train_through_operator(work: Path) -> tuple[float, dict[str, Any]]:
    cluster = DevCluster(work / "cluster")
    st = cluster.up()
    env = {**os.environ, "KUBECONFIG": st.kubeconfig, "TRELLIS_STATE_DIR": str(work / "state"),
           "TRELLIS_METRICS_PORT": "0", "TRELLIS_WEBHOOK_PORT": "-1",
           "METAFLOW_USER": os.environ.get("METAFLOW_USER", "trellis")}
    log = open(work / "operator.log", "wb")  # noqa: SIM115
    op = subprocess.Popen([sys.executable, "-m", "controller", "-n", "bench"], env=env,
                          stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        cluster.kubectl("create", "namespace", "bench")
        exp = {"apiVersion": "mlops.trellis.dev/v1alpha1", "kind": "Experiment",
               "metadata": {"name": "classifier", "namespace": "bench"},
               "spec": {"flow": {"file": "flows/pumpkin_flow.py", "name": "PumpkinFlow"},
                        "parameters": PARAMS, "resources": {"cpu": 2},
                        "objective": {"metric": "accuracy", "goal": "maximize",
                                      "threshold": 0.9}}}
        started = time.perf_counter()
        cluster.kubectl("apply", "-f", "-", input=json.dumps(exp))
        while True:
            out = cluster.kubectl("get", "exp", "classifier", "-n", "bench", "-o", "json").stdout
            status = json.loads(out).get("status") or {}
            if status.get("phase") in ("Succeeded", "Failed") and not status.get("currentRun"):
                return time.perf_counter() - started, status
            if time.perf_counter() - started > 900:
                raise RuntimeError("training through the operator took over 15 minutes")
            time.sleep(0.5)
    finally:
        op.terminate()
        op.wait(timeout=30)
        log.close()
        cluster.down()


def baseline(device: str = "cpu") -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "baseline_train.py"), "--device", device,
         "--seed", str(PARAMS["seed"]), "--epochs", str(PARAMS["epochs"]),
         "--lr", str(PARAMS["lr"]), "--variety", PARAMS["variety"]],
        capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _image_body() -> bytes:
    sys.path.insert(0, str(ROOT / "flows"))
    import pumpkin_data

    x = pumpkin_data.generate(1, seed=3).x.round(4)
    return json.dumps({"data": {"ndarray": x.tolist()}}).encode()


def _photo_pixels() -> Any:
    """The photo ``_image_body`` sends, as the uint8 pixels a camera would have."""
    return _photos_uint8(1)[0]


def _photos_uint8(n: int) -> Any:
    """``n`` photos as uint8 (n, 64, 64, 3) pixels; ``n=1`` is ``_image_body``'s photo."""
    import numpy as np

    sys.path.insert(0, str(ROOT / "flows"))
    import pumpkin_data

    return np.rint(pumpkin_data.generate(n, seed=3).x * 255.0).astype(np.uint8)


def _bin_data_body(pixels: Any = None) -> bytes:
    """One photo as Seldon ``binData``: PNG bytes, base64 in the JSON body."""
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(_photo_pixels() if pixels is None else pixels, "RGB").save(buf, format="PNG")
    return json.dumps({"binData": base64.b64encode(buf.getvalue()).decode()}).encode()


def _tensor_body(pixels: Any) -> bytes:
    """A batch as ``data.tensor`` (the batch form the model server takes; binData is one
    photo per message): ``pixel / 255`` to 4 decimals, which still names each pixel."""
    values = (pixels.astype("float64") / 255.0).round(4).ravel().tolist()
    return json.dumps({"data": {"tensor": {"shape": list(pixels.shape),
                                           "values": values}}}).encode()


def _untrained_model(work: Path) -> str:
    """A model version directory holding an untrained ``PumpkinNet`` (``--serving-only``)."""
    import torch

    sys.path.insert(0, str(ROOT / "flows"))
    import pumpkin_model

    torch.manual_seed(0)
    directory = work / "models" / "1"
    directory.mkdir(parents=True)
    (directory / "model.pt").write_bytes(
        pumpkin_model.to_torchscript(pumpkin_model.PumpkinNet().eval()))
    return directory.as_uri()


def time_http(url: str, body: bytes, n: int) -> list[float]:
    times = []
    for _ in range(n):
        req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
        t0 = time.perf_counter()
        with urllib.request.urlopen(req, timeout=30) as resp:
            resp.read()
        times.append((time.perf_counter() - t0) * 1000)
    return times


def time_alternating(url: str, bodies: tuple[bytes, bytes], n: int,
                     warm_up: int = 20) -> tuple[list[float], list[float]]:
    """Both bodies' latencies, sent in turn (a, b, a, b, ...) after ``warm_up`` of each."""
    for _ in range(warm_up):
        for body in bodies:
            time_http(url, body, 1)
    first: list[float] = []
    second: list[float] = []
    for _ in range(n):
        first += time_http(url, bodies[0], 1)
        second += time_http(url, bodies[1], 1)
    return first, second


def time_forward(model_dir: Path, n: int) -> list[float]:
    import numpy as np
    import torch

    torch.set_num_threads(1)
    model = torch.jit.load(str(model_dir / "model.pt"))
    sys.path.insert(0, str(ROOT / "flows"))
    import pumpkin_data

    x = torch.from_numpy(np.ascontiguousarray(pumpkin_data.generate(1, seed=3).x,
                                              dtype=np.float32))
    times = []
    with torch.no_grad():
        for _ in range(n):
            t0 = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - t0) * 1000)
    return times


pct = loadgen.percentile


def time_batch(url: str, batch: bytes, singles: list[bytes], rounds: int,
               warm_up: int = 2) -> tuple[list[float], list[float], list[float]]:
    """Per round, the batch request and then the same photos one request each, in turn so
    both meet the same load: batch latencies, each round's total for the singles, and
    every single request's latency (all ms). ``warm_up`` rounds go untimed first."""
    batch_ms: list[float] = []
    totals: list[float] = []
    each: list[float] = []
    for i in range(warm_up + rounds):
        b = time_http(url, batch, 1)
        s = [time_http(url, body, 1)[0] for body in singles]
        if i >= warm_up:
            batch_ms += b
            totals.append(sum(s))
            each += s
    return batch_ms, totals, each


def serving(model_uri: str, work: Path, n: int, plan: loadgen.Plan | None = None,
            batch_rounds: int = 10) -> list[dict[str, Any]]:
    from controller.serving.local import DesiredServing, LocalServingBackend, PredictorSpec

    plan = plan or loadgen.Plan()
    backend = LocalServingBackend(work / "serving", ROOT / ".venv-serving" / "bin" / "python",
                                  ROOT / "serving")
    desired = DesiredServing("bench", "classifier",
                             [PredictorSpec("stable", 1, model_uri, 100)], None, 1 << 28, None)
    observed = asyncio.run(backend.ensure(desired))
    try:
        body = _image_body()
        direct = observed.predictors["stable"]
        direct_url = f"http://127.0.0.1:{direct.port}/api/v1.0/predictions"
        routed_url = observed.endpoint + "/api/v1.0/predictions"
        time_http(routed_url, body, 20)  # warm both paths
        time_http(direct_url, body, 20)
        routed = time_http(routed_url, body, n)
        straight = time_http(direct_url, body, n)
        bare = time_forward(Path(model_uri.removeprefix("file://")), n)
        photo = _bin_data_body()
        # alternating requests, so both kinds meet the same machine load and warm-up
        nd_routed, photo_routed = time_alternating(routed_url, (body, photo), n)
        nd_straight, photo_straight = time_alternating(direct_url, (body, photo), n)
        load = loadgen.compare({"direct": direct_url, "router": routed_url}, photo, plan)
        pixels = _photos_uint8(BATCH)
        batch = _tensor_body(pixels)
        singles = [_bin_data_body(p) for p in pixels]
        batch_ms, totals, each = time_batch(routed_url, batch, singles, batch_rounds)
    finally:
        asyncio.run(backend.teardown("bench", "classifier"))
    rows = []
    note = f"{n} sequential single-image requests (258 KB JSON), same model, same run"
    for q in (50, 99):
        r, d, b = pct(routed, q), pct(straight, q), pct(bare, q)
        rows.append(row(f"serving p{q} latency: router + Seldon wrapper", r, "ms",
                        "Seldon wrapper direct", d, note))
        rows.append(row(f"serving p{q} latency: Seldon wrapper direct", d, "ms",
                        "bare model forward in-process", b, note))
        rows.append(row(f"serving p{q} latency: bare model forward in-process", b, "ms",
                        "-", None, "TorchScript forward, 1 thread, batch of 1"))
    rps = {k: n / (sum(v) / 1000) for k, v in
           (("router", routed), ("direct", straight), ("bare", bare))}
    rows.append(row("serving throughput: router + Seldon wrapper", rps["router"], "req/s",
                    "Seldon wrapper direct", rps["direct"], note + "; sequential client"))
    rows.append(row("serving throughput: Seldon wrapper direct", rps["direct"], "req/s",
                    "bare model forward in-process", rps["bare"], note))
    rows += _photo_rows(n, len(body), len(photo), (nd_routed, nd_straight),
                        (photo_routed, photo_straight))
    rows += loadgen.load_rows(load, plan, f"one 64x64 binData PNG photo per request "
                              f"({len(photo)} bytes), same model server behind the router "
                              "and alone, request log off")
    rows += _batch_rows(batch_rounds, len(batch), sum(map(len, singles)), batch_ms, totals,
                        each)
    return rows


def _batch_rows(rounds: int, batch_bytes: int, singles_bytes: int, batch_ms: list[float],
                totals: list[float], each: list[float]) -> list[dict[str, Any]]:
    """One request carrying 32 photos against the same 32 photos sent one by one: equal
    work per request pair (32 photos classified) and per photo."""
    work = (f"router + Seldon wrapper, the same {BATCH} photos both ways, {rounds} rounds "
            f"after 2 warm-up rounds, the batch then the singles each round, one request at "
            f"a time; batch: data.tensor, {batch_bytes} bytes of JSON; singles: binData "
            f"PNG, {singles_bytes} bytes in all")
    batch_p50, totals_p50 = pct(batch_ms, 50), pct(totals, 50)
    return [
        row(f"serving batch of {BATCH} photos: p50 per request", batch_p50, "ms",
            f"{BATCH} single-photo binData requests in sequence, p50 of their total",
            totals_p50, work),
        row(f"serving batch of {BATCH} photos: p50 per photo", batch_p50 / BATCH, "ms",
            "one single-photo binData request, p50", pct(each, 50), work),
    ]


def _photo_rows(n: int, ndarray_bytes: int, photo_bytes: int,
                ndarray: tuple[list[float], list[float]],
                photo: tuple[list[float], list[float]]) -> list[dict[str, Any]]:
    """binData PNG vs ndarray JSON for the same photo, both sides timed alike."""
    work = ("both: one 64x64 photo per request, the same photo, the same model server and "
            f"router (request log off), 20 warm-up requests each then {n} each, sent "
            "alternately one at a time; "
            "binData: PNG decoded by Pillow in the model server; ndarray: JSON floats (4 "
            "decimals) parsed and checked by the model server")
    rows = [row("serving request body: one photo as binData PNG", photo_bytes, "bytes",
                "the same photo as ndarray JSON", ndarray_bytes,
                "JSON body sent to the endpoint; PNG is base64 in the binData field", digits=0)]
    for q in (50, 99):
        for path, index in (("router + Seldon wrapper", 0), ("Seldon wrapper direct", 1)):
            rows.append(row(f"serving p{q} latency: binData PNG photo, {path}",
                            pct(photo[index], q), "ms", f"ndarray JSON photo, {path}",
                            pct(ndarray[index], q), work))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--load-requests", type=int, default=loadgen.Plan.requests,
                        help="per level, target and repeat (or --load-seconds, first)")
    parser.add_argument("--load-seconds", type=float, default=loadgen.Plan.seconds)
    parser.add_argument("--load-repeats", type=int, default=loadgen.Plan.repeats)
    parser.add_argument("--batch-rounds", type=int, default=10)
    parser.add_argument("--out", help="also write the JSON rows here")
    parser.add_argument("--serving-only", action="store_true",
                        help="no training: serve an untrained PumpkinNet (latency rows only)")
    args = parser.parse_args(argv)
    plan = loadgen.Plan(requests=args.load_requests, seconds=args.load_seconds,
                        repeats=args.load_repeats)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="trellis-bench-") as tmp:
        work = Path(tmp)
        if args.serving_only:
            rows = serving(_untrained_model(work), work, args.requests, plan,
                           args.batch_rounds)
            emit(rows, args.out)
            return 0
        wall, status = train_through_operator(work)
        base = baseline()
        run = (status.get("runs") or [{}])[-1]
        acc = run.get("metrics", {}).get("accuracy", 0.0)
        rows.append(row("training run through the operator (apply → Succeeded)", wall, "s",
                        "plain PyTorch script, same data and epochs", base["wall_seconds"],
                        f"CPU, {PARAMS['epochs']} epochs, 3000 photos; held-out accuracy "
                        f"{acc:.3f} vs {base['test_accuracy']:.3f}; Metaflow run "
                        f"{run.get('durationSeconds')} s of it"))
        rows.append(row("training throughput, plain PyTorch (CPU)", base["samples_per_second"],
                        "samples/s", "-", None, f"{base['torch_threads']} torch threads"))
        models = status.get("models") or []
        if models:
            rows += serving(models[-1]["artifactUri"], work, args.requests, plan,
                            args.batch_rounds)
    text = json.dumps(rows, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
