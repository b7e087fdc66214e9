"""Train the pumpkin classifier: the flow every Trellis Experiment in the demo runs."""

from metaflow import FlowSpec, Parameter, step


class PumpkinFlow(FlowSpec):
    """Tell good pumpkins from bad ones.

    1. start    - collect the photos: synthetic farm photos (orange, white or mixed
                  pumpkins, some stray watermelons) plus, optionally, logged live
                  inputs that received ground-truth labels (``feedback_uri``).
    2. verify   - drop watermelons and invalid photos; fail the run if too many are
                  invalid (``max_invalid_fraction``), then split train/val/test and
                  fingerprint the training data.
    3. train    - a small CNN in PyTorch (CUDA when available), with per-epoch metrics
                  written live to ``TRELLIS_PROGRESS_FILE`` so the operator can show
                  "epoch x/y" while the step is still running.
    4. evaluate - held-out accuracy, per-class precision/recall, F1 and the confusion
                  matrix, plus the reference statistics the drift check compares with.
    5. end      - publish the model version directory (model.pt, reference.json,
                  metrics.json, meta.json; see docs/contracts.md) and its URI.

    Compute (``@resources``) is not declared here: the operator adds it on the command
    line (``--with resources:gpu=..,cpu=..,memory=..``) from the Experiment spec.
    """

    seed = Parameter("seed", type=int, default=0, help="Seed for data, split and training.")
    n_samples = Parameter(
        "n_samples", type=int, default=3000, help="How many synthetic photos to collect."
    )
    image_size = Parameter(
        "image_size", type=int, default=64, help="Photo side in pixels (the model takes 64)."
    )
    variety = Parameter(
        "variety",
        type=str,
        default="orange",
        help="Pumpkin variety in the photos: orange, white or mixed.",
    )
    white_fraction = Parameter(
        "white_fraction",
        type=float,
        default=0.5,
        help="Share of white pumpkins when variety is mixed.",
    )
    watermelon_fraction = Parameter(
        "watermelon_fraction",
        type=float,
        default=0.05,
        help="Share of stray watermelon photos among the collected ones.",
    )
    epochs = Parameter("epochs", type=int, default=8, help="Training epochs.")
    lr = Parameter("lr", type=float, default=0.005, help="Peak learning rate (one-cycle Adam).")
    batch_size = Parameter("batch_size", type=int, default=64, help="Training batch size.")
    max_invalid_fraction = Parameter(
        "max_invalid_fraction",
        type=float,
        default=0.2,
        help="Fail the run when more than this share of photos is dropped by verify.",
    )
    feedback_weight = Parameter(
        "feedback_weight",
        type=int,
        default=4,
        help="How many times each labelled live input (feedback_uri) counts in training.",
    )
    live_reference_min = Parameter(
        "live_reference_min",
        type=int,
        default=200,
        help="With at least this many labelled live inputs (feedback_uri), the drift "
        "reference is built from them instead of the training photos.",
    )
    feedback_uri = Parameter(
        "feedback_uri",
        type=str,
        default="",
        help="Optional .npz of labelled live inputs (x uint8 (n,64,64,3), y int) to train on: "
        "a path, file:// or s3:// URI.",
    )
    fail_at_step = Parameter(
        "fail_at_step",
        type=str,
        default="",
        help="For tests: raise deliberately at the start of this step.",
    )

    @step
    def start(self):
        """Collect the photos and record which code and inputs this run is made of."""
        import pumpkin_data

        self._enter("start")
        for name in ("white_fraction", "watermelon_fraction", "max_invalid_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {getattr(self, name)}")
        if self.n_samples < 50:
            raise ValueError(f"n_samples must be at least 50, got {self.n_samples}")
        batch = pumpkin_data.generate(
            self.n_samples,
            seed=self.seed,
            variety=self.variety,
            white_fraction=self.white_fraction,
            watermelon_fraction=self.watermelon_fraction,
            size=self.image_size,
        )
        self.images = pumpkin_data.to_uint8(batch.x)
        self.labels = batch.y
        self.feedback_images, self.feedback_labels = None, None
        if self.feedback_uri:
            x, y = _load_feedback(self.feedback_uri)
            expected = (self.image_size, self.image_size, 3)
            if x.ndim != 4 or x.shape[1:] != expected or len(x) != len(y):
                raise ValueError(
                    f"feedback {self.feedback_uri}: expected x (n, {expected}) and y (n,), "
                    f"got x {x.shape} and y {y.shape}"
                )
            self.feedback_images, self.feedback_labels = x, y
        self.commit = _source_commit()
        n_feedback = 0 if self.feedback_labels is None else len(self.feedback_labels)
        print(f"collected {len(self.images)} photos and {n_feedback} labelled live inputs")
        self.next(self.verify)

    @step
    def verify(self):
        """Drop watermelons and invalid photos, then split and fingerprint the data.

        Feedback photos go to the training split only: they are the newest, scarcest
        examples and the held-out split stays comparable between runs.
        """
        import hashlib

        import numpy as np
        import pumpkin_data as pdata

        self._enter("verify")
        sources = [("synthetic", self.images, self.labels)]
        if self.feedback_images is not None:
            sources.append(("feedback", self.feedback_images, self.feedback_labels))
        report, kept = {}, []
        for name, x, y in sources:
            xf = pdata.from_uint8(x) if x.dtype == np.uint8 else x.astype(np.float32)
            invalid = pdata.find_invalid(xf)
            melon = ~invalid & pdata.detect_watermelons(np.nan_to_num(xf))
            bad_label = ~invalid & ~melon & ~np.isin(y, (0, 1))
            keep = ~(invalid | melon | bad_label)
            report[name] = {
                "total": len(x),
                "watermelons": int(melon.sum()),
                "invalid_images": int(invalid.sum()),
                "invalid_labels": int(bad_label.sum()),
                "kept": int(keep.sum()),
            }
            kept.append((pdata.to_uint8(np.nan_to_num(xf[keep])), y[keep].astype(np.int64)))
        total = sum(r["total"] for r in report.values())
        dropped = total - sum(r["kept"] for r in report.values())
        self.invalid_fraction = dropped / max(1, total)
        self.verify_report = report
        print(f"verify: {report}")
        if self.invalid_fraction > self.max_invalid_fraction:
            raise ValueError(
                f"verify: {dropped} of {total} photos ({self.invalid_fraction:.1%}) are "
                f"watermelons, invalid or unlabelled, more than max_invalid_fraction="
                f"{self.max_invalid_fraction:.1%}; details: {report}"
            )

        (x, y), extra = kept[0], kept[1:]
        order = np.random.default_rng(self.seed).permutation(len(x))
        n_val = n_test = max(1, int(0.15 * len(x)))
        test, val, train = np.split(order, [n_test, n_test + n_val])
        self.x_test, self.y_test = x[test], y[test]
        self.x_val, self.y_val = x[val], y[val]
        self.x_live = extra[0][0] if extra else None
        self.y_seen = np.concatenate([y[train], *(e[1] for e in extra)])  # each sample once
        # Live inputs are few next to the synthetic photos but they are today's world:
        # each counts feedback_weight times.
        w = max(1, self.feedback_weight)
        self.x_train = np.concatenate([x[train], *(np.repeat(e[0], w, axis=0) for e in extra)])
        self.y_train = np.concatenate([y[train], *(np.repeat(e[1], w, axis=0) for e in extra)])
        digest = hashlib.sha256()
        for arr in (self.x_train, self.y_train):
            digest.update(f"{arr.dtype.str}{arr.shape}".encode())
            digest.update(np.ascontiguousarray(arr).tobytes())
        self.dataset_fingerprint = "sha256:" + digest.hexdigest()
        self.next(self.train)

    @step
    def train(self):
        """Fit the CNN, reporting each epoch to the progress file as it finishes.

        OpenMP threads that spin while waiting collapse throughput (10x and worse) when
        the CPU is shared with other work, so unless told otherwise they sleep instead.
        """
        import os

        self._enter("train")
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when torch loads
        import pumpkin_model

        device = pumpkin_model.pick_device()
        self.epoch_metrics = []

        def on_epoch(epoch: int, metrics: dict) -> None:
            self.epoch_metrics.append(dict(metrics))
            print(f"epoch {epoch}/{self.epochs}: {metrics}")
            self._write_progress("train", epoch, metrics)

        result = pumpkin_model.train_model(
            self.x_train,
            self.y_train,
            self.x_val,
            self.y_val,
            epochs=self.epochs,
            lr=self.lr,
            batch_size=self.batch_size,
            seed=self.seed,
            device=device,
            on_epoch=on_epoch,
        )
        self.device = str(device)
        self.train_seconds = result.seconds
        self.samples_per_second = result.samples_per_second
        self.model_bytes = pumpkin_model.to_torchscript(result.model)
        self.next(self.evaluate)

    @step
    def evaluate(self):
        """Score the exported TorchScript model on the held-out split; build the reference."""
        import numpy as np
        import pumpkin_model

        self._enter("evaluate")
        model = pumpkin_model.load_torchscript(self.model_bytes)
        pred = pumpkin_model.predict(model, self.x_test)
        self.metrics = pumpkin_model.classification_metrics(self.y_test, pred)
        print(f"held-out metrics: {self.metrics}")

        # The reference describes the inputs this version will serve. A retrain on enough
        # labelled live inputs takes them as the reference: they are today's world, which
        # the synthetic photos of the original spec no longer are.
        live = self.x_live is not None and len(self.x_live) >= self.live_reference_min
        self.reference_source = "live" if live else "training"
        feats = pumpkin_model.features(model, self.x_live if live else self.x_train)
        levels = [0.05, 0.25, 0.5, 0.75, 0.95]
        rng = np.random.default_rng(self.seed)
        rows = rng.choice(len(feats), size=min(2000, len(feats)), replace=False)
        names = list(model.feature_names)
        self.reference = {
            "feature_names": names,
            "samples": np.round(feats[np.sort(rows)], 6).tolist(),
            "summary": {
                name: {
                    "mean": float(col.mean()),
                    "std": float(col.std()),
                    "min": float(col.min()),
                    "max": float(col.max()),
                    "quantiles": [float(q) for q in np.quantile(col, levels)],
                }
                for name, col in zip(names, feats.T, strict=True)
            },
            "quantile_levels": levels,
            "source": self.reference_source,
            "class_counts": {
                "bad": int((self.y_seen == 0).sum()),
                "good": int((self.y_seen == 1).sum()),
            },
        }
        self.next(self.end)

    @step
    def end(self):
        """Publish the model version directory and point the run's artifacts at it.

        The store is TRELLIS_MODEL_STORE (a path, file:// or s3:// URI), by default
        ``models/`` next to the local Metaflow datastore.
        """
        import datetime
        import json
        import os

        from metaflow import current
        from metaflow.metaflow_config import DATASTORE_SYSROOT_LOCAL

        self._enter("end")
        store = os.environ.get("TRELLIS_MODEL_STORE") or os.path.join(
            DATASTORE_SYSROOT_LOCAL or os.getcwd(), "models"
        )
        meta = {
            "flow": current.flow_name,
            "run": current.run_id,
            "dataset_fingerprint": self.dataset_fingerprint,
            "commit": self.commit,
            "parameters": {name: getattr(self, name) for name in current.parameter_names},
            "created_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        files = {
            "model.pt": self.model_bytes,
            "reference.json": json.dumps(self.reference).encode(),
            "metrics.json": json.dumps(self.metrics, indent=2).encode(),
            "meta.json": json.dumps(meta, indent=2).encode(),
        }
        self.model_uri = _publish(files, store, f"{current.flow_name}/{current.run_id}")
        self.reference_uri = f"{self.model_uri}/reference.json"
        print(f"model version {self.model_uri}: accuracy {self.metrics['accuracy']:.3f}")

    def _enter(self, step_name: str) -> None:
        """Report the step to the operator and honour ``fail_at_step`` (test hook)."""
        epoch = len(getattr(self, "epoch_metrics", []) or []) or None
        last = self.epoch_metrics[-1] if epoch else None
        self._write_progress(step_name, epoch, last)
        if self.fail_at_step == step_name:
            raise RuntimeError(f"fail_at_step={step_name!r}: deliberate failure for testing")

    def _write_progress(self, step_name: str, epoch: int | None, metrics: dict | None) -> None:
        """Atomically replace the JSON progress file named by TRELLIS_PROGRESS_FILE.

        Artifacts only become visible when a step ends; this file is how the operator
        sees an epoch finish while ``train`` is still running.
        """
        import json
        import os
        import time

        from metaflow import current

        path = os.environ.get("TRELLIS_PROGRESS_FILE")
        if not path:
            return
        doc = {
            "flow": current.flow_name,
            "run_id": current.run_id,
            "step": step_name,
            "epoch": epoch,
            "epochs": self.epochs,
            "metrics": metrics or {},
            "epoch_metrics": list(getattr(self, "epoch_metrics", []) or []),
            "updated_at": time.time(),
        }
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f)
        os.replace(tmp, path)


def _publish(files: dict, store: str, suffix: str) -> str:
    """Write the version directory ``<store>/<suffix>/`` and return its URI.

    Local files are replaced atomically one by one; the run only points at the
    directory (``model_uri``) once all of them are in place.
    """
    import os
    import tempfile
    from pathlib import Path

    store = store.removeprefix("file://").rstrip("/")
    if store.startswith("s3://"):
        from metaflow import S3

        with tempfile.TemporaryDirectory() as tmp, S3(s3root=f"{store}/{suffix}") as s3:
            staged = []
            for name, data in files.items():
                Path(tmp, name).write_bytes(data)
                staged.append((name, os.path.join(tmp, name)))
            s3.put_files(staged)
        return f"{store}/{suffix}"
    if "://" in store:
        raise ValueError(f"TRELLIS_MODEL_STORE must be a path, file:// or s3:// URI: {store}")
    version_dir = Path(store).resolve() / suffix
    version_dir.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (version_dir / f".{name}.tmp").write_bytes(data)
        os.replace(version_dir / f".{name}.tmp", version_dir / name)
    return version_dir.as_uri()


def _load_feedback(uri: str):
    """The ``x`` and ``y`` arrays of the feedback .npz at ``uri`` (a path, file:// or s3://).

    The operator exports it to S3 when this flow runs in a pod (the pod cannot read the
    operator's disk); boto3 reaches the same endpoint as Metaflow's datastore
    (METAFLOW_S3_ENDPOINT_URL, else boto3's own AWS_ENDPOINT_URL) with the AWS_* credentials.
    """
    import io
    import os
    from urllib.parse import unquote, urlparse

    import numpy as np

    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        import boto3
        from botocore.config import Config

        endpoint = os.environ.get("METAFLOW_S3_ENDPOINT_URL") or None
        client = boto3.client(
            "s3", endpoint_url=endpoint, config=Config(s3={"addressing_style": "path"})
        )
        body = client.get_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))["Body"]
        source = io.BytesIO(body.read())
    elif parsed.scheme in ("", "file"):
        source = unquote(parsed.path) if parsed.scheme else uri
    else:
        raise ValueError(f"feedback_uri must be a path, file:// or s3:// URI: {uri}")
    with np.load(source) as data:
        return data["x"], np.asarray(data["y"]).astype(np.int64)


def _source_commit() -> str:
    """TRELLIS_SOURCE_COMMIT if the operator set it, else this file's git HEAD."""
    import os
    import subprocess

    commit = os.environ.get("TRELLIS_SOURCE_COMMIT", "").strip()
    if commit:
        return commit
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=os.path.dirname(os.path.abspath(__file__)),
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


if __name__ == "__main__":
    PumpkinFlow()
