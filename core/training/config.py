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
    per_sample_rates: bool = False  # continuous codecs: one rate per sample instead of one per batch
    rate_power: float = 1.0  # "uniform": rate = min + (max - min)·u^p, p > 1 samples low rates more
    rate_lambdas: list[float] | None = None  # λ(rate) at the listed rates (log-interpolated)
    lambda_on: str = "rate"  # the term λ(rate) scales: "rate" or "distortion" (the mse term)
    low_rate_weight: float = 1.0  # the rate term is also weighted low_rate_weight^(1 - rate)
    task_rate_weights: list[float] | None = None  # every task's terms weighted by these at the listed rates
    val_rates: list[float] | None = None  # continuous codecs: rates validated every epoch (default: rates)
    beta: float = 1.0  # continuous codecs: passed as forward(x, rate, beta=...)
    new_low_gains: list[float] | None = None  # ICMNet: gain levels added below the init's lowest (rate 0 moves down)
    new_context: bool = False  # ICMNet: add a context model (channel groups x checkerboard; starts as the plain hyperprior)
    train_modules: list[str] | None = None  # train only these submodules; the rest frozen, in eval mode
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
    init: str | None = None  # start weights: a state-dict file, a previous run's out folder, or "scratch"
    export: str | None = None  # also write the final weights here, fp16, in the shipped format
    steps_per_epoch: int | None = None  # an epoch is this many batches drawn at random (default: one pass)
    lr_schedule: str = "exponential"  # "exponential" (lr_decay per epoch) or "cosine" (per step)
    lr_steps: int | None = None  # cosine: the schedule's length in steps (default: every step of the run)
    warmup_steps: int = 0  # linear warm-up from 0 over this many steps
    stop_after: int | None = None  # stop after this many steps (the cosine still spans lr_steps)
    crop: int | None = None  # random square crops of this size, one position per batch
    hflip: bool = False  # flip each sample left-right with probability 1/2
    clamp_for_tasks: bool = False  # task models see x̂ clamped to [0, 1]
    task_scales: dict[str, float] = field(default_factory=dict)  # multiplies every term of a task
    skip_nonfinite: bool = True  # skip (and count) steps whose loss or gradient is not finite
    backend: str | None = None  # train this task's feature back end on the (frozen) feature codec's decoded features

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
    for key in ("rate_lambdas", "task_rate_weights"):  # both log-interpolated over codec.rates
        values = getattr(cfg.codec, key)
        if values is not None and (len(values) != len(cfg.codec.rates or []) or min(values, default=1) <= 0):
            raise UserError(f"{source}: codec.{key} needs one value > 0 per codec.rates entry")
    grow = cfg.codec.new_low_gains
    if grow and not cfg.init:
        raise UserError(f"{source}: codec.new_low_gains extends the gain levels of an init: set init")
    if grow is not None and (not grow or min(grow) <= 0 or len(set(grow)) != len(grow)):
        raise UserError(f"{source}: codec.new_low_gains needs distinct distances > 0 (in lowest gain steps), e.g. [1.25]")
    if cfg.codec.rate_sampling not in ("list", "uniform"):
        raise UserError(f"{source}: codec.rate_sampling must be 'list' or 'uniform'")
    if cfg.codec.lambda_on not in ("rate", "distortion"):
        raise UserError(f"{source}: codec.lambda_on must be 'rate' or 'distortion'")
    if cfg.codec.rate_power <= 0 or cfg.codec.low_rate_weight <= 0:
        raise UserError(f"{source}: codec.rate_power and codec.low_rate_weight must be > 0")
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise UserError(f"{source}: epochs and batch_size must be >= 1")
    if cfg.lr_schedule not in ("exponential", "cosine"):
        raise UserError(f"{source}: lr_schedule must be 'exponential' or 'cosine'")
    for key in ("steps_per_epoch", "lr_steps", "stop_after", "crop"):
        if getattr(cfg, key) is not None and getattr(cfg, key) < 1:
            raise UserError(f"{source}: {key} must be >= 1")
    if cfg.warmup_steps < 0:
        raise UserError(f"{source}: warmup_steps must be >= 0")
    unknown_tasks = sorted(set(cfg.task_scales) - named)
    if unknown_tasks:
        raise UserError(f"{source}: task_scales names {unknown_tasks}, which are not tasks of this run")
    if cfg.crop and any(k.partition(":")[0] in ("task", "gtbox_distill") for k in losses):
        raise UserError(f"{source}: crop cuts the images the ground truth describes; task and gtbox_distill terms need whole images")
    if cfg.backend is not None:
        if cfg.backend not in named:
            raise UserError(f"{source}: backend {cfg.backend!r} is not a task of this run (add a task:{cfg.backend} loss)")
        if cfg.crop:
            raise UserError(f"{source}: a back end trains on whole images' features; remove crop")
        if cfg.reevaluate:
            cfg.reevaluate = False  # the codec does not change: its Pareto front is the codec's own
    return cfg


def load_config(path: str | Path) -> TrainConfig:
    from icm.paths import read_toml

    path = Path(path)
    data = read_toml(path, "training config")
    return parse_config(data, f"training config {path}")
