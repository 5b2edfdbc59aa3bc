"""A training run as data: a TOML file in configs/train/ (reference: docs/training.md)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from icm.errors import UserError
from icm.evaluation.config import TaskSpec, parse_task


@dataclass
class CodecConfig:
    name: str
    options: dict = field(default_factory=dict)  # open_codec options: weights, checkpoint, device...
    quality: int | None = None  # quality-indexed codecs (CompressAI): the one quality fine-tuned
    rates: list[float] | None = None  # continuous-rate codecs: training rates in [0, 1]
    rate_sampling: str = "list"  # "list": one of `rates` per batch; "uniform": uniform in [min, max]
    rate_lambdas: list[float] | None = None  # per-rate factor on the rate term (log-interpolated)
    val_rates: list[float] | None = None  # continuous codecs: rates validated every epoch (default: rates)
    beta: float = 1.0  # continuous codecs: passed as forward(x, rate, beta=...)
    pad_to: int = 64


@dataclass
class LossTerm:
    weight: float = 1.0
    options: dict = field(default_factory=dict)


@dataclass
class TrainConfig:
    codec: CodecConfig
    losses: dict[str, LossTerm]
    tasks: list[TaskSpec] = field(default_factory=list)
    schedule: str = "fixed"
    schedule_options: dict = field(default_factory=dict)
    dataset: str = "shapes"
    train_split: str = "train"
    val_split: str = "val"
    train_limit: int | None = None
    val_limit: int | None = None
    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-4
    lr_decay: float = 1.0  # lr of epoch e = lr · lr_decay^(e-1) (Le: 0.99995)
    aux_lr: float = 1e-3  # entropy-bottleneck quantiles (CompressAI's auxiliary loss)
    clip_grad: float = 1.0  # max gradient norm; 0 = off
    seed: int = 0
    device: str | None = None
    out: str = "results/train"
    reevaluate: bool = True  # re-evaluate the Pareto-front candidates with real bitstreams at the end
    eval_batch_size: int = 8

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


TOP_KEYS = {f.name for f in dataclasses.fields(TrainConfig)}


def parse_config(data: dict, source: str = "config") -> TrainConfig:
    unknown = set(data) - TOP_KEYS
    if unknown:
        raise UserError(f"{source}: unknown keys {sorted(unknown)}")
    data = dict(data)
    codec = data.pop("codec", None)
    if isinstance(codec, str):
        codec = {"name": codec}
    if not isinstance(codec, dict) or "name" not in codec:
        raise UserError(f"{source}: needs a [codec] table with a name")
    try:
        codec = CodecConfig(**codec)
    except TypeError as exc:
        raise UserError(f"{source}: bad [codec] table ({exc})") from None
    losses = {}
    for term, value in (data.pop("losses", None) or {}).items():
        if isinstance(value, (int, float)):
            losses[term] = LossTerm(float(value))
        elif isinstance(value, dict):
            value = dict(value)
            losses[term] = LossTerm(float(value.pop("weight", 1.0)), value)
        else:
            raise UserError(f"{source}: loss {term!r} must be a weight or a table with 'weight'")
    if not losses:
        raise UserError(f"{source}: needs a [losses] table, e.g. rate = 0.01, mse = 1.0")
    schedule = data.pop("schedule", "fixed")
    options = data.pop("schedule_options", {})
    if isinstance(schedule, dict):
        options = {k: v for k, v in schedule.items() if k != "name"}
        schedule = schedule.get("name", "fixed")
    try:
        tasks = [TaskSpec(**t) if isinstance(t, dict) else parse_task(t) for t in data.pop("tasks", [])]
    except TypeError as exc:
        raise UserError(f"{source}: bad task entry ({exc})") from None
    named = {t.name for t in tasks}
    for term in losses:  # tasks a loss names join the run with their default model
        _, _, task = term.partition(":")
        if task and task not in named:
            tasks.append(TaskSpec(task))
            named.add(task)
    cfg = TrainConfig(codec=codec, losses=losses, tasks=tasks, schedule=schedule, schedule_options=options, **data)
    if cfg.codec.rate_lambdas is not None and len(cfg.codec.rate_lambdas) != len(cfg.codec.rates or []):
        raise UserError(f"{source}: codec.rate_lambdas needs one value per codec.rates entry")
    if cfg.codec.rate_sampling not in ("list", "uniform"):
        raise UserError(f"{source}: codec.rate_sampling must be 'list' or 'uniform'")
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise UserError(f"{source}: epochs and batch_size must be >= 1")
    return cfg


def load_config(path: str | Path) -> TrainConfig:
    from icm.paths import read_toml

    path = Path(path)
    data = read_toml(path, "training config")
    return parse_config(data, f"training config {path}")
