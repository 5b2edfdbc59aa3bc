"""Training task-aware codecs (``icm train``): loss terms (losses.py), loss-weight schedules
(schedules.py, a registry filled by the ``icm_register_schedules`` hook), the loop with checkpoints,
resume, DDP and validation (loop.py, validate.py), and the Pareto-front re-evaluation with real
bitstreams (pareto.py). Reference: docs/training.md."""
