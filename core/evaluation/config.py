"""An experiment as data: a TOML file in configs/experiments/, overridable from the CLI."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path

from icm.codecs import SCALES
from icm.errors import UserError

DEFAULT_ANCHORS = ("jpeg", "webp", "avif", "hevc")


@dataclass
class CodecSpec:
    name: str
    rates: list[dict] | None = None  # None: the codec's default sweep
    scales: list[float] = field(default_factory=lambda: [1.0])  # the resolution grid (anchors)
    options: dict = field(default_factory=dict)  # checkpoint / weights / device
    anchor: bool = False


@dataclass
class TaskSpec:
    name: str
    config: str | None = None
    checkpoint: str | None = None
    weights: str | None = None  # "random": a config without a checkpoint runs on random-init weights


@dataclass
class Experiment:
    tasks: list[TaskSpec] = field(default_factory=list)
    codecs: list[CodecSpec] = field(default_factory=list)
    dataset: str = "shapes"
    split: str = "val"
    limit: int | None = None
    reference: str = "hevc"
    out: str = "results/evaluate"
    batch_size: int = 8
    label_free: bool = False
    samples_in_report: int = 2
    device: str | None = None
    class_map: dict = field(default_factory=dict)  # model class name -> dataset class name
    strict: bool = False  # any recorded failure makes the run fail (exit 1) after writing its outputs


_CONFIG_THEN_CHECKPOINT = re.compile(r"^(?P<config>.+?\.(?:py|json|ya?ml)):(?P<checkpoint>.+)$")


def parse_task(text: str) -> TaskSpec:
    """``NAME`` or ``NAME=CONFIG[:CHECKPOINT]``. The config ends in .py/.json/.yaml, so the checkpoint
    may itself be a URL (``det=cfg.py:https://host/x.pth``)."""
    if "=" not in text:
        return TaskSpec(text.strip())
    name, rest = text.split("=", 1)
    m = _CONFIG_THEN_CHECKPOINT.match(rest)
    config, checkpoint = (m["config"], m["checkpoint"]) if m else (rest, None)
    return TaskSpec(name.strip(), config or None, checkpoint or None)


def parse_rates(text: str) -> list[dict]:
    """``1,3,5`` (the codec's quality index), ``qp=22,27`` or ``rate=0.1,0.5`` (continuous); a
    ``key=`` prefix applies to the values after it until the next prefix."""
    out, key = [], "quality"
    for item in (t.strip() for t in text.split(",") if t.strip()):
        prefix, _, value = item.rpartition("=")
        key = prefix or key
        try:
            number = float(value)
        except ValueError:
            raise UserError(f"--rates: {item!r} is not a number") from None
        if key != "rate" and number != int(number):
            raise UserError(f"--rates: {key} must be an integer, not {value}")
        out.append({key: number if key == "rate" else int(number)})
    return out


def load_experiment(path: str | Path) -> Experiment:
    from icm.paths import read_toml

    path = Path(path)
    data = read_toml(path, "experiment config")
    known = {f.name for f in fields(Experiment)}
    unknown = set(data) - known - {"anchors", "anchor_scales"}
    if unknown:
        raise UserError(f"experiment config {path}: unknown keys {sorted(unknown)}")
    exp = Experiment(**{k: v for k, v in data.items() if k in known and k not in ("tasks", "codecs")})
    try:
        exp.tasks = [TaskSpec(**t) if isinstance(t, dict) else parse_task(t) for t in data.get("tasks", [])]
        exp.codecs = [CodecSpec(**c) if isinstance(c, dict) else CodecSpec(c) for c in data.get("codecs", [])]
    except TypeError as exc:
        raise UserError(f"experiment config {path}: bad task or codec entry ({exc})") from None
    add_anchors(exp, data.get("anchors", list(DEFAULT_ANCHORS)), data.get("anchor_scales", [1.0]))
    if not isinstance(exp.class_map, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                      for k, v in exp.class_map.items()):
        raise UserError(f"experiment config {path}: class_map must be a table of model class = dataset class names")
    return exp


def parse_class_map(text: str) -> dict[str, str]:
    """``--class-map model=dataset,...``: model class names to the dataset's category names."""
    out = {}
    for item in (t.strip() for t in text.split(",") if t.strip()):
        model, sep, data = (s.strip() for s in item.partition("="))
        if not sep or not model or not data:
            raise UserError(f"--class-map: expected MODEL_CLASS=DATASET_CLASS, got {item!r}")
        out[model] = data
    return out


def add_anchors(exp: Experiment, names, scales) -> None:
    bad = [s for s in scales if s not in SCALES]
    if bad:
        raise UserError(f"anchor scales {bad} not in {list(SCALES)}")
    have = {c.name for c in exp.codecs}
    exp.codecs += [CodecSpec(n, scales=list(scales), anchor=True) for n in names if n not in have]
