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
    crop_each: bool = False  # each sample its own crop position, so a batch mixes image sizes (photos)
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
    if cfg.crop_each and not (cfg.crop and cfg.steps_per_epoch):
        raise UserError(f"{source}: crop_each needs crop and steps_per_epoch (batches drawn from images of any size)")
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
    """A plain training config (one run); a recipe's stages come from load_stages."""
    (name, cfg), *more = load_stages(path)
    if name is not None:
        raise UserError(f"training config {path} is a recipe of {len(more) + 1} stages: use load_stages")
    return cfg


def load_stages(path: str | Path) -> list[tuple[str | None, TrainConfig]]:
    """The runs a training file describes, in order, with their names: a plain config is one run, named
    None; a recipe (``[[stage]]`` tables) is one run per stage (parse_stages)."""
    from icm.paths import read_toml

    path = Path(path)
    data = read_toml(path, "training config")
    source = f"training config {path}"
    if "stage" not in data:
        return [(None, parse_config(data, source))]
    return parse_stages(data, source, default_out=f"results/train/{path.stem}")


def parse_stages(data: dict, source: str, default_out: str = "results/train") -> list[tuple[str, TrainConfig]]:
    """A recipe: its top-level keys are the base that every ``[[stage]]`` overrides, ``codec`` key by key,
    any other key (``losses`` too) as a whole; ``unset`` drops base keys (TOML has no null). Stage NAME
    writes OUT/NAME, and starts from the previous stage's final weights unless it sets ``init``."""
    base = dict(data)
    stages, root = base.pop("stage"), base.pop("out", default_out)
    if not isinstance(stages, list) or not stages:
        raise UserError(f"{source}: `stage` must be [[stage]] tables")
    runs: list[tuple[str, TrainConfig]] = []
    for number, stage in enumerate(stages, 1):
        stage = dict(stage)
        name, unset = stage.pop("name", None), stage.pop("unset", [])
        if not isinstance(name, str) or not name.isidentifier():
            raise UserError(f"{source}: stage {number} needs a name of letters, digits and _")
        if name in dict(runs):
            raise UserError(f"{source}: two stages are named {name!r}")
        if "out" in stage:
            raise UserError(f"{source}: stage {name} sets out; a stage writes OUT/{name} (set out at the top)")
        merged = {**base, **stage, "out": f"{root}/{name}"}
        merged["codec"] = {**_table(base.get("codec")), **_table(stage.get("codec"))}
        for key in unset:
            table, _, sub = key.rpartition(".")
            holder = merged.get(table) if table else merged
            if not isinstance(holder, dict) or sub not in holder:
                raise UserError(f"{source}: stage {name} unsets {key!r}, which the base does not set")
            del holder[sub]
        if runs and "init" not in merged:
            merged["init"] = runs[-1][1].out
        runs.append((name, parse_config(merged, f"{source}, stage {name}")))
    return runs


def _table(codec) -> dict:
    return {"name": codec} if isinstance(codec, str) else dict(codec or {})


def relocate(stages: list[tuple[str, TrainConfig]], root: str | Path) -> None:
    """Write stage NAME to ROOT/NAME and its export to ROOT/NAME/export.pth; an init naming what an earlier
    of these stages writes follows it there (a stage run alone keeps reading its init where it is)."""
    moved: dict[str, str] = {}
    for name, cfg in stages:
        if cfg.init and str(Path(cfg.init)) in moved:
            cfg.init = moved[str(Path(cfg.init))]
        out = Path(root) / name
        moved[str(Path(cfg.out))], cfg.out = str(out), str(out)
        if cfg.export:
            moved[str(Path(cfg.export))], cfg.export = str(out / "export.pth"), str(out / "export.pth")


def check_inits(stages: list[tuple[str, TrainConfig]], recipe: list[tuple[str, TrainConfig]]) -> None:
    """Every init exists or is written by an earlier of ``stages``, before the first run starts; a missing
    one names the stage of ``recipe`` that writes it."""
    from icm.training.codec import init_file

    written: set[str] = set()
    for name, cfg in stages:
        if cfg.init and cfg.init != "scratch" and str(Path(cfg.init)) not in written:
            try:
                init_file(cfg.init)
            except UserError as exc:
                names = [n for n, _ in recipe]
                writers = [n for n, c in recipe[: names.index(name)] if str(Path(cfg.init)) in _writes(c)]
                hint = f"; stage {writers[-1]} writes it" if writers else ""
                raise UserError(f"stage {name}: {exc}{hint}") from None
        written |= _writes(cfg)


def retarget(cfg: TrainConfig, dataset: str | None = None, tasks: list[TaskSpec] | None = None) -> None:
    """Point a run at other data: ``dataset`` replaces its dataset; ``tasks`` replace the tasks of a run that
    trains through task models, keeping those it has loss terms for (with the given models) and dropping
    the others' terms. A run without tasks (e.g. pixel MSE) keeps none."""
    if dataset:
        cfg.dataset = dataset
    if not tasks or not cfg.tasks:
        return
    keep = [t for t in tasks if t.name in {s.name for s in cfg.tasks}]
    if not keep:
        raise UserError(f"--tasks {','.join(t.name for t in tasks)}: the run writing {cfg.out} trains for "
                        f"{', '.join(t.name for t in cfg.tasks)}, so none would be left")
    names = {t.name for t in keep}
    cfg.tasks = keep
    cfg.losses = {k: v for k, v in cfg.losses.items() if k.partition(":")[2] in ("", *names)}
    cfg.task_scales = {k: v for k, v in cfg.task_scales.items() if k in names}
    if cfg.backend and cfg.backend not in names:
        raise UserError(f"--tasks: the run writing {cfg.out} trains the {cfg.backend} back end; keep {cfg.backend}")


def _writes(cfg: TrainConfig) -> set[str]:
    return {str(Path(p)) for p in (cfg.out, cfg.export) if p}
