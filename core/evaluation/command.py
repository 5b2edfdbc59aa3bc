"""`icm evaluate`: the command-line face of icm.evaluation.run."""

from __future__ import annotations

import click

from icm.errors import UserError
from icm.evaluation.config import (DEFAULT_ANCHORS, CodecSpec, Experiment, add_anchors, load_experiment, parse_class_map,
                                   parse_rates, parse_task)

GRID = [1.0, 0.75, 0.5, 0.25]
DEFAULT_CODECS = ("icm-omni", "icm-hyperprior-mse", "icm-omni-features")  # the shipped learned codecs, used when their weights exist


@click.command()
@click.option("--tasks", "tasks", multiple=True,
              help="Tasks, comma-separated and/or repeated (default: every installed task; 'none': PSNR and "
                   "MS-SSIM only). See `icm tasks`.")
@click.option("--task", "task_models", multiple=True, metavar="NAME=CONFIG[:CKPT]",
              help="Swap in another model for a task: any OpenMMLab config, checkpoint path or URL.")
@click.option("--codec", "--codecs", "codecs", multiple=True,
              help="Codecs to evaluate, comma-separated and/or repeated (default: the shipped codecs).")
@click.option("--rates", help="Rate points for --codec: quality indices '1,3,5' or 'rate=0.1,0.4'.")
@click.option("--checkpoint", help="Checkpoint file or folder for the --codec learned codecs.")
@click.option("--anchors", help=f"Comma-separated anchors (default: {','.join(DEFAULT_ANCHORS)}; '' for none).")
@click.option("--anchor-grid", is_flag=True, help="Run anchors on the QP x resolution grid (100/75/50/25 %, Le §4.2).")
@click.option("--reference", help="Anchor the BD-rates are measured against (default: hevc).")
@click.option("--dataset", help="Registered dataset name, a dataset folder, or a dataset config (default: shapes).")
@click.option("--split", help="Dataset split (default: val).")
@click.option("--limit", type=int, help="Use only the first N images.")
@click.option("--out", help="Output folder (default: results/evaluate).")
@click.option("--config", "config_path", type=click.Path(), help="An experiment TOML (see configs/experiments/).")
@click.option("--label-free", is_flag=True, help="Score against predictions on the uncompressed images, not labels.")
@click.option("--device", help="torch device for task models (default: cuda if available, else cpu).")
@click.option("--weights", type=click.Choice(["random"]),
              help="Run --task configs given without a checkpoint on random-init weights (refused otherwise).")
@click.option("--class-map", "class_map", metavar="MODEL=DATASET,...",
              help="Score these model classes as these dataset classes (classes are matched by name).")
@click.option("--strict", is_flag=True, help="Exit 1 if any image, prediction or scoring failed (outputs are still written).")
@click.option("--workers", type=click.IntRange(min=1),
              help="Worker processes, one thread each (default: every CPU core; 1 on a GPU or under torchrun).")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@click.option("--check-parity", is_flag=True,
              help="Only compare each task's accuracy on the uncompressed images with the task library's own "
                   "test loop (same model and images); print the table, exit 1 if a number differs.")
def evaluate(tasks, task_models, codecs, rates, checkpoint, anchors, anchor_grid, reference, dataset, split, limit, out,
             config_path, label_free, device, weights, class_map, strict, workers, no_progress, check_parity):
    """Encode each image once per codec and rate, decode once, and evaluate every task on it."""
    from icm.evaluation.predicting import check_weights
    from icm.evaluation.run import evaluate as run
    from icm.plugins import get_plugins

    exp = load_experiment(config_path) if config_path else Experiment()
    plugins = get_plugins()
    tasks, codecs = _names(tasks), _names(codecs)  # "--tasks a,b" and "--tasks a --tasks b" alike
    codec_only = tasks == ["none"]  # a codec study: rate, PSNR and MS-SSIM, no task model loaded
    if "none" in tasks and not codec_only:
        raise UserError("--tasks none cannot be combined with task names")
    if codec_only:
        exp.tasks = []
    elif tasks:
        exp.tasks = [parse_task(t) for t in tasks]
    elif not exp.tasks:
        exp.tasks = [parse_task(t) for t in plugins.tasks.names()]
    for text in task_models:
        if "=" not in text:
            raise UserError(f"--task {text}: expected NAME=CONFIG[:CHECKPOINT]")
        spec = parse_task(text)
        exp.tasks = [t for t in exp.tasks if t.name != spec.name] + [spec]
    if not exp.tasks and not codec_only:
        raise UserError("no tasks: install a task plugin (see `icm tasks`), or pass --tasks none for PSNR/MS-SSIM only")
    if weights:
        for t in exp.tasks:
            if t.config and not t.checkpoint:
                t.weights = weights
    if class_map:
        exp.class_map = {**exp.class_map, **parse_class_map(class_map)}
    exp.strict = exp.strict or strict
    for t in exp.tasks:
        plugins.tasks.entry(t.name)  # unknown task -> one-line error now, not after encoding
    rate_list = parse_rates(rates) if rates else None
    options = {"checkpoint": checkpoint} if checkpoint else {}
    # Dropping them in silence would evaluate other rates or weights than asked for. --rates alone also
    # sets the default codecs' rates; --checkpoint needs a learned codec named.
    if (rates and not codecs and exp.codecs) or (checkpoint and not codecs):
        flag = "--rates" if rates and exp.codecs else "--checkpoint"
        raise UserError(f"{flag} applies to the --codec codecs: name them (--codec NAME), "
                        f"or set it under a config's [[codecs]]")
    if codecs:
        exp.codecs = [CodecSpec(n, rates=rate_list, options=options) for n in codecs]
    elif not exp.codecs:
        from icm.codecs import open_codec

        for name in DEFAULT_CODECS:
            if name in plugins.codecs:
                reason = open_codec(name).unavailable_reason()
                if reason:
                    click.echo(f"icm: warning: default codec {name} skipped: {reason}", err=True)
                else:
                    exp.codecs.append(CodecSpec(name, rates=rate_list))
    for c in exp.codecs:
        plugins.codecs.entry(c.name)
    if anchors is not None or not config_path:  # a config's own anchor list (even empty) is kept
        names = [a for a in (anchors if anchors is not None else ",".join(DEFAULT_ANCHORS)).split(",") if a.strip()]
        scales = next((c.scales for c in exp.codecs if c.anchor), [1.0])
        exp.codecs = [c for c in exp.codecs if not c.anchor]
        add_anchors(exp, names, scales)
    if anchor_grid:
        for c in exp.codecs:
            if c.anchor:
                c.scales = list(GRID)
    for key, value in (("reference", reference), ("dataset", dataset), ("split", split), ("limit", limit),
                       ("out", out), ("device", device)):
        if value is not None:
            setattr(exp, key, value)
    exp.label_free = exp.label_free or label_free
    if exp.limit is not None and exp.limit < 1:
        raise UserError("--limit must be at least 1")
    if exp.reference not in {c.name for c in exp.codecs}:
        raise UserError(f"reference {exp.reference!r} is not among the evaluated codecs/anchors")
    for t in exp.tasks:
        check_weights(t)
    if check_parity:  # no coding: the uncompressed images, icm against each library's own loop
        from icm.evaluation.parity import run_check

        if codec_only:
            raise UserError("--check-parity needs tasks (not --tasks none)")
        raise SystemExit(run_check(exp))
    from icm.faults import check_out_dir

    check_out_dir(exp.out)  # a file or a read-only folder is refused before any model loads
    from icm.evaluation.workers import default_workers, launch

    workers = workers or default_workers(exp.device)
    if workers > 1:  # everything above is checked once, here, before the workers start
        from icm.datasets import load_dataset

        load_dataset(exp.dataset, exp.split)  # a bad dataset is one error line, not one per worker
        code = launch(click.get_current_context().find_root().obj["argv"], workers)
        if code:
            raise SystemExit(code)
        return
    summary = run(exp, progress=not no_progress)
    if summary is None:
        return
    _print_summary(summary)
    _print_timing(summary["timing"])
    failures = summary["counters"]["failures"]
    if failures:
        images = len({f["image_id"] for f in failures if "image_id" in f})
        tasks = sorted({f["task"] for f in failures if "task" in f})
        click.echo(f"icm: {len(failures)} failure(s): {images} image(s) skipped at some point"
                   f"{'; tasks affected: ' + ', '.join(tasks) if tasks else ''}; each is listed above and in "
                   f"{summary['out']}/results.json (counters.failures)", err=True)
        if summary["strict"]:
            raise SystemExit(1)


def _print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    analysis = summary["analysis"]
    for task, a in [*((t, a) for t, a in analysis.items() if t != "_psnr"), ("_psnr", analysis["_psnr"])]:
        if task == "_psnr":  # last: the codec's own quality, as the field reports it (CompressAI's averaging)
            title = f"PSNR (RGB dB, mean over images); BD vs {a['reference']}"
        elif a["uncompressed"] is not None:
            title = f"{task}: {a['primary']} (uncompressed {a['uncompressed']:.3f}); BD vs {a['reference']}"
        else:
            title = task
        table = Table(title=title, title_justify="left")
        for col in ("codec", "BD-rate %", "BD-metric", "points"):
            table.add_column(col)
        for codec, curve in sorted(a["curves"].items()):
            bd = a["bd"].get(codec, {})
            table.add_row(codec, "ref" if codec == a["reference"] else _f(bd.get("bd_rate"), 1),
                          _f(bd.get("bd_metric"), 4), " ".join(f"{b:.3f}:{m:.3f}" for b, m, _ in sorted(curve["points"])))
        console.print(table)
        for note in sorted({f"{label}: {m['note']}" for label, m in summary["metrics"].get(task, {}).items() if m.get("note")}):
            console.print(f"  note: {note}")
    c = summary["counters"]
    console.print(f"{c['encodes']} encodes ({c['bitstream_cache_hits']} cached), {c['decodes']} decodes, "
                  f"{c.get('scores', 0)} scored ({c.get('score_cache_hits', 0)} cached), "
                  f"{len(c['failures'])} failures; {summary['wall_seconds']:.0f} s; wrote {summary['out']}/results.json, "
                  f"results.csv, plots/, report.html")


def _print_timing(timing: dict) -> None:
    from icm.evaluation.timing import stage_table

    click.echo("\n".join(stage_table(timing["stages"], timing["wall_seconds"], timing["cpu_seconds"], timing["workers"],
                                       timing.get("rank_peak_rss_mb"))))


def _names(values) -> list[str]:
    return [n.strip() for v in values for n in v.split(",") if n.strip()]


def _f(v, d):
    return "–" if v is None else f"{v:.{d}f}"
