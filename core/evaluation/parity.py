"""``icm evaluate --check-parity``: icm's accuracy on the uncompressed images against each task
library's own test loop, for the same model and images.

For every task whose adapter has a library test (:meth:`icm.tasks.TaskAdapter.library_test`), two
numbers are compared:

- the predictions: icm's, and those of the library's loop (to 1e-4 in their own units: pixels,
  probabilities), and their metrics by the same icm evaluator (to 1e-6). This is how the model is
  run (test pipeline, test-time settings);
- the metric: icm's, and the library's own metric class as it prints it, to within its rounding
  (a COCO metric prints 3 decimals, an IoU metric 0.01 %). This is how it is scored.
"""

from __future__ import annotations

import torch

from icm.errors import UserError
from icm.tasks import Batch

TOLERANCE = 1e-6  # metrics
PREDICTION_TOLERANCE = 1e-4  # predictions (pixels, probabilities): batches of other sizes round differently


def icm_predictions(adapter, images: list[dict], batch_size: int) -> dict:
    """Predictions on the uncompressed images, batched by size as ``icm evaluate`` batches them."""
    from icm.images import load_image

    by_size: dict[tuple, list] = {}
    for s in images:
        img = load_image(s["file_name"])
        by_size.setdefault(img.shape, []).append((s, img))
    preds = {}
    for group in by_size.values():
        for i in range(0, len(group), batch_size):
            part = group[i:i + batch_size]
            x = torch.stack([torch.from_numpy(img.copy()).permute(2, 0, 1) for _, img in part]).float().div(255)
            with torch.no_grad():
                out = adapter.predict(Batch(x.to(adapter.device), [s for s, _ in part]))
            preds.update({s["id"]: p for (s, _), p in zip(part, out)})
    return preds


def difference(a, b) -> float:
    """The largest absolute difference between two predictions (nested dicts, lists and arrays);
    inf where their structure, shapes or non-numeric leaves (an RLE string, a label) differ."""
    import numpy as np

    if isinstance(a, dict) or isinstance(b, dict):
        if not (isinstance(a, dict) and isinstance(b, dict)) or set(a) != set(b):
            return float("inf")
        return max((difference(a[k], b[k]) for k in a), default=0.0)
    if isinstance(a, (list, tuple)) and not (len(a) and isinstance(a[0], (int, float))):
        if not isinstance(b, (list, tuple)) or len(a) != len(b):
            return float("inf")
        return max((difference(x, y) for x, y in zip(a, b)), default=0.0)
    if isinstance(a, (str, bytes)) or a is None:
        return 0.0 if a == b else float("inf")
    x, y = np.asarray(a), np.asarray(b)
    if x.shape != y.shape:
        return float("inf")
    if x.size == 0:
        return 0.0
    if not np.issubdtype(x.dtype, np.number):
        return 0.0 if np.array_equal(x, y) else float("inf")
    return float(np.abs(x.astype(np.float64) - y.astype(np.float64)).max())


def score(adapter, images: list[dict], predictions: dict) -> dict:
    ev = adapter.evaluator()
    ev.process([predictions[s["id"]] for s in images], images)
    return ev.compute()


def check(adapters: dict, images: list[dict], batch_size: int = 8, progress=None) -> list[dict]:
    """One row per task and metric: icm's value, the library loop's (scored by icm), the library's
    printed value, and whether each pair agrees."""
    rows = []
    for task, adapter in adapters.items():
        for s in images:  # a library loop cannot take images icm failed to read: say which, in one line
            if s.get("file_name") is None:
                raise UserError(f"parity: image {s['id']} has no file")
        if progress:
            progress(f"{task}: icm")
        mine_preds = icm_predictions(adapter, images, batch_size)
        mine = score(adapter, images, mine_preds)
        if progress:
            progress(f"{task}: the library's own test loop")
        lib = adapter.library_test(images)
        if lib is None:
            rows.append({"task": task, "metric": adapter.primary_metric, "icm": mine.get(adapter.primary_metric),
                         "library_loop": None, "library_metric": None, "agree": None,
                         "note": "this task's adapter has no library test"})
            continue
        missing = [s["id"] for s in images if s["id"] not in lib.predictions]
        if missing:
            raise UserError(f"parity: the library's test loop of task {task} gave no prediction for image "
                            f"{missing[0]} ({len(missing)} of {len(images)} missing)")
        theirs = score(adapter, images, lib.predictions)
        gap = max(difference(mine_preds[s["id"]], lib.predictions[s["id"]]) for s in images)
        for metric in adapter.metrics:
            a, b, printed = mine.get(metric), theirs.get(metric), lib.metrics.get(metric)
            same_run = a is not None and b is not None and abs(a - b) <= TOLERANCE and gap <= PREDICTION_TOLERANCE
            same_score = printed is None or (a is not None and abs(a - printed) <= lib.rounding + TOLERANCE)
            rows.append({"task": task, "metric": metric, "icm": a, "library_loop": b, "library_metric": printed,
                         "rounding": lib.rounding, "prediction_difference": gap,
                         "agree": bool(same_run and same_score), "note": lib.note})
    return rows


def run_check(exp) -> int:
    """The ``--check-parity`` run: every task of ``exp`` on its dataset's first ``limit`` images. Prints
    the table, writes ``OUT/parity.json``, and returns the exit code (0: every number agrees)."""
    import json
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from icm.datasets import load_dataset
    from icm.evaluation.engine import Engine
    from icm.bitstream import atomic_write_bytes

    if exp.label_free:
        raise UserError("--check-parity compares with the libraries' metrics on labels: drop --label-free")
    dataset = load_dataset(exp.dataset, exp.split)
    images = dataset.images[: exp.limit] if exp.limit else dataset.images
    adapters = Engine(exp, progress=False).adapters()
    for a in adapters.values():
        a.bind(dataset)
        a.check(label_free=False)
    console = Console(stderr=True)
    rows = check(adapters, images, exp.batch_size, progress=lambda what: console.print(f"parity: {what}"))
    table = Table(title=f"uncompressed accuracy on {dataset.name} ({len(images)} images): icm against the "
                        f"libraries' own test loops", title_justify="left")
    for col in ("task", "metric", "icm", "library loop", "|difference|", "library metric", "predictions max |Δ|",
                "agree"):
        table.add_column(col)
    fmt = (lambda v: "–" if v is None else f"{v:.6f}")
    for r in rows:
        diff = None if r["icm"] is None or r["library_loop"] is None else abs(r["icm"] - r["library_loop"])
        table.add_row(r["task"], r["metric"], fmt(r["icm"]), fmt(r["library_loop"]),
                      "–" if diff is None else f"{diff:.1e}", fmt(r["library_metric"]),
                      "–" if r.get("prediction_difference") is None else f"{r['prediction_difference']:.1e}",
                      {True: "yes", False: "NO", None: "–"}[r["agree"]])
    wide = Console(width=max(140, Console().width))
    wide.print(table)
    for note in sorted({f"{r['task']}: {r['note']}" for r in rows if r.get("note")}):
        wide.print(f"  note: {note}")
    out = Path(exp.out) / "parity.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, json.dumps({"dataset": dataset.name, "images": len(images), "rows": rows}, indent=1).encode())
    bad = [r for r in rows if r["agree"] is False]
    if bad:
        print(f"icm: parity: {len(bad)} number(s) differ from the libraries' own test loops (see the table; "
              f"{out})", file=__import__("sys").stderr)
        return 1
    return 0
