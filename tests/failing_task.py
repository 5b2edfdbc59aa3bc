"""Task plugins that fail in the ways a real adapter can, for the no-lost-work tests: ``broken``
(its evaluator raises), ``blank`` (its evaluator returns no primary metric) and ``needs-labels``
(cannot score against pseudo ground truth)."""

from icm import hookimpl
from toy_task import Closeness, MeanColour


class BrokenCloseness(Closeness):
    def compute(self):
        raise RuntimeError("evaluator exploded")


class Broken(MeanColour):
    name = "broken"

    def evaluator(self, pseudo_ground_truth=None):
        return BrokenCloseness(self, pseudo_ground_truth)


class NoPrimary(Closeness):
    def compute(self):
        return {"other": 1.0}


class Blank(MeanColour):
    name = "blank"

    def evaluator(self, pseudo_ground_truth=None):
        return NoPrimary(self, pseudo_ground_truth)


class NeedsLabels(MeanColour):
    name = "needs-labels"
    label_free_unsupported = "it scores against hand labels only"


@hookimpl
def icm_register_tasks(register):
    for cls in (Broken, Blank, NeedsLabels):
        register(cls.name, cls, metrics=list(cls.metrics))
