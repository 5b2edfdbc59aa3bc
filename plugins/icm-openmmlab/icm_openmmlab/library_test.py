"""The library's own test loop (mmengine's ``Runner.test()``) on icm's images, for parity checks."""

from __future__ import annotations

import copy

from icm.errors import UserError
from icm_openmmlab.models import check_fit, quiet, scope


def run_library_test(adapter, images: list[dict], dataset: dict, metric, convert, model_cfg=None):
    """mmengine's ``Runner.test()`` (the library's own test loop) on ``dataset`` (a dataset config
    over ``images``, whose pipeline is the library's) with the adapter's model and weights, scored by ``metric`` (a
    metric instance of the library, or None). ``convert`` turns each of the loop's data samples (as dicts)
    into what the adapter collects (for example ``(image id, prediction)``). Returns (the converted
    samples in the loop's order, the metric's results). ``model_cfg`` replaces the adapter's model config (its weights must fit it)."""
    import tempfile
    import uuid

    from mmengine.config import ConfigDict
    from mmengine.evaluator import BaseMetric, Evaluator
    from mmengine.runner import Runner

    class Capture(BaseMetric):  # keeps what the loop predicted, so icm can score it too
        default_prefix = "icm"

        def process(self, data_batch, data_samples):
            self.results.extend(convert(d) for d in data_samples)

        def compute_metrics(self, results):
            self.captured = results
            return {}

    capture = Capture()
    # icm batches images of one size; so does the loop then (a mixed batch would be padded to its largest)
    batch_size = 8 if len({(s["height"], s["width"]) for s in images}) == 1 else 1
    cfg = model_cfg if model_cfg is not None else adapter.cfg.model
    cfg = ConfigDict(cfg.to_dict() if hasattr(cfg, "to_dict") else copy.deepcopy(dict(cfg)))
    with tempfile.TemporaryDirectory(prefix="icm-library-test-") as work, scope(adapter.library), quiet():
        runner = Runner(model=cfg, work_dir=work, experiment_name=f"icm-library-test-{uuid.uuid4().hex[:8]}",
                        test_dataloader=dict(batch_size=batch_size, num_workers=0, dataset=dataset,
                                             sampler=dict(type="DefaultSampler", shuffle=False)),
                        test_cfg=dict(type="TestLoop"), test_evaluator=Evaluator([m for m in (metric, capture) if m is not None]),
                        default_scope=adapter.library, log_level="WARNING",
                        default_hooks=dict(logger=dict(type="LoggerHook", interval=10**9)))
        state = adapter.model.state_dict()
        check_fit(runner.model, state, "the library test's model", strict=False)
        runner.model.load_state_dict(state, strict=False)
        results = runner.test()
    return list(capture.captured), results


def subset_positions(paths_in_order: list[str], wanted: list[str]) -> list[int]:
    """Positions of ``wanted`` in a library dataset's own order (its ``indices`` argument), so its loop
    runs on exactly the images icm scores."""
    where = {str(p): i for i, p in enumerate(paths_in_order)}
    missing = [w for w in wanted if str(w) not in where]
    if missing:
        raise UserError(f"the library's dataset does not list {missing[0]} ({len(missing)} image(s) missing)")
    return [where[str(w)] for w in wanted]
