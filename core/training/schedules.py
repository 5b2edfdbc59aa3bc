"""Loss-weight schedules: how the terms of Le Eq. 3.6 (``w_rate·L_rate + w_mse·L_mse + w_task·L_task``)
are weighted over training.

A schedule multiplies each term's configured weight by its own factor, which may change per epoch
(``le_phased``), follow the terms' loss history (``dwa``) or be learned (``uncertainty``). Schedules
live in a plain :class:`~icm.registry.Registry` filled by the ``icm_register_schedules`` hook, so a
plugin adds one with ``register(name, factory, description=...)``; ``factory(terms, **options)``
returns a :class:`Schedule`. Epochs are numbered from 1.
"""

from __future__ import annotations

import math

import torch

from icm.errors import UserError
from icm.registry import Registry


class Schedule:
    """Base class: every term gets factor 1. Subclasses override :meth:`factors` (and, for learned
    weights, :meth:`combine`, :meth:`parameters` and the state methods)."""

    name = ""

    def __init__(self, terms: list[str]):
        self.terms = list(terms)
        self.epoch = 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def factors(self) -> dict[str, float]:
        return {t: 1.0 for t in self.terms}

    def active(self) -> list[str]:
        """Terms worth computing this epoch (a zero factor skips e.g. an expensive task loss)."""
        f = self.factors()
        return [t for t in self.terms if f[t] != 0.0]

    def combine(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        f = self.factors()
        return sum((f[t] * v for t, v in losses.items() if f[t] != 0.0), torch.zeros(()))

    def end_epoch(self, epoch: int, mean_losses: dict[str, float]) -> None:
        """Called with the epoch's mean (weighted) loss per term, the same on every rank."""

    def parameters(self) -> list[torch.nn.Parameter]:
        return []

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class Fixed(Schedule):
    """The configured weights, unchanged."""

    name = "fixed"


def f_w(x: float, a: float, base: float = 1e-3) -> float:
    """Le Eq. 4.1: ``f_w(x, a) = 1e-3 · a^(x-1)``."""
    return base * a ** (x - 1)


class LePhased(Schedule):
    """Le thesis Eq. 4.1 (Example 1 of §3.4.1): MSE only until ``p1``, then the task terms rise
    (``task_scale·f_w(e-p1, 1.01)``); the rate term enters at ``p2`` and restarts its growth at ``p3``
    and, faster, at ``p4``. ``mse`` keeps factor 1; ``rate`` follows w_rate; every other term w_task."""

    name = "le_phased"

    def __init__(self, terms, phases=(50, 75, 120, 165), base=1e-3, task_scale=4.0, rate_scale=2.0,
                 task_growth=1.01, rate_growth=(1.01, 1.01, 1.02)):
        super().__init__(terms)
        if "mse" not in self.terms:
            raise UserError("schedule le_phased starts from MSE only: add an 'mse' loss term")
        phases = [int(p) for p in phases]
        if len(phases) != 4 or phases != sorted(phases):
            raise UserError(f"schedule le_phased: phases must be 4 increasing epochs, not {phases}")
        if len(rate_growth) != 3:
            raise UserError("schedule le_phased: rate_growth needs 3 values (phases p2, p3, p4)")
        self.phases, self.base = phases, float(base)
        self.task_scale, self.rate_scale = float(task_scale), float(rate_scale)
        self.task_growth, self.rate_growth = float(task_growth), [float(g) for g in rate_growth]

    def w_task(self, e: int) -> float:
        p1 = self.phases[0]
        return 0.0 if e < p1 else self.task_scale * f_w(e - p1, self.task_growth, self.base)

    def w_rate(self, e: int) -> float:
        _, p2, p3, p4 = self.phases
        if e < p2:
            return 0.0
        start, growth = (p2, self.rate_growth[0]) if e < p3 else (p3, self.rate_growth[1]) if e < p4 else (p4, self.rate_growth[2])
        return self.rate_scale * f_w(e - start, growth, self.base)

    def factors(self):
        e = self.epoch
        return {t: 1.0 if t == "mse" else self.w_rate(e) if t == "rate" else self.w_task(e) for t in self.terms}


class DWA(Schedule):
    """Dynamic weight average (Le Eq. 2.6): ``w_i(t) = K·softmax_i(λ_i(t-1)/T)`` with
    ``λ_i(t-1) = L_i(t-1)/L_i(t-2)`` from the epoch mean losses; factor 1 for the first two epochs."""

    name = "dwa"

    def __init__(self, terms, temperature=2.0):
        super().__init__(terms)
        if temperature <= 0:
            raise UserError("schedule dwa: temperature must be > 0")
        self.temperature = float(temperature)
        self.history: list[dict[str, float]] = []  # epoch mean losses, oldest first

    def factors(self):
        past = [h for h in self.history if h.get("epoch", 0) < self.epoch]
        if len(past) < 2:
            return {t: 1.0 for t in self.terms}
        prev, prev2 = past[-1], past[-2]
        ratios = [prev[t] / prev2[t] if prev2.get(t) else 1.0 for t in self.terms]
        top = max(ratios)
        exps = [math.exp((r - top) / self.temperature) for r in ratios]  # softmax, shifted: no overflow
        total = sum(exps)
        return {t: len(self.terms) * e / total for t, e in zip(self.terms, exps)}

    def end_epoch(self, epoch, mean_losses):
        self.history = [h for h in self.history if h["epoch"] < epoch]
        self.history.append({"epoch": epoch, **{t: float(mean_losses.get(t, 0.0)) for t in self.terms}})

    def state_dict(self):
        return {"history": [dict(h) for h in self.history]}

    def load_state_dict(self, state):
        self.history = [dict(h) for h in state.get("history", [])]


class Uncertainty(Schedule):
    """Uncertainty weighting with a learned ``s_i = ln σ_i²`` per term (added to the optimiser):
    Le Eq. 2.10 ``Σ L_i/(2σ_i²) + ln(σ_i² + 1)`` (``positive = true``, the default) or Eq. 2.9
    ``Σ L_i/(2σ_i²) + ln σ_i²``."""

    name = "uncertainty"

    def __init__(self, terms, positive=True, init=0.0):
        super().__init__(terms)
        self.positive = bool(positive)
        self.log_var = torch.nn.Parameter(torch.full((len(self.terms),), float(init)))

    def factors(self):
        return {t: float(0.5 * torch.exp(-s)) for t, s in zip(self.terms, self.log_var.detach())}

    def active(self):
        return list(self.terms)

    def combine(self, losses):
        total = torch.zeros(())
        for i, t in enumerate(self.terms):
            if t in losses:
                s = self.log_var[i]
                reg = torch.nn.functional.softplus(s) if self.positive else s  # ln(e^s + 1) = ln(σ² + 1)
                total = total + 0.5 * torch.exp(-s) * losses[t] + reg
        return total

    def parameters(self):
        return [self.log_var]

    def state_dict(self):
        return {"log_var": self.log_var.detach().clone()}

    def load_state_dict(self, state):
        if "log_var" in state:
            with torch.no_grad():
                self.log_var.copy_(state["log_var"])


BUILTIN = (Fixed, LePhased, DWA, Uncertainty)

def schedule_registry() -> Registry:
    """The schedules registry of the process-wide plugin set (built-ins and plugins' schedules)."""
    from icm.training import plugin_registry

    return plugin_registry("schedules", "schedule", "icm.training.builtin_schedules", "icm_register_schedules")


def build_schedule(name: str, terms: list[str], options: dict | None = None) -> Schedule:
    factory = schedule_registry().get(name)
    try:
        schedule = factory(list(terms), **(options or {}))
    except TypeError as exc:
        raise UserError(f"schedule {name!r}: bad options {sorted(options or {})} ({exc})") from None
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule factory {name!r} returned {type(schedule).__name__}, not a Schedule")
    return schedule
