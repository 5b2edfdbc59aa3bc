"""`icm train CONFIG [CONFIG ...]`: the command-line face of icm.training.loop."""

from __future__ import annotations

import click


@click.command()
@click.argument("configs", nargs=-1, required=True, type=click.Path(dir_okay=False), metavar="CONFIG...")
@click.option("--stage", "stage_name", metavar="NAME", help="Run only this stage of a recipe (its init must exist).")
@click.option("--dataset", help="Train every run on this dataset (a registered name, a dataset folder or config).")
@click.option("--tasks", "tasks", multiple=True,
              help="Tasks, comma-separated and/or repeated (NAME or NAME=CONFIG[:CKPT]): every run that trains "
                   "through task models keeps those of these it has loss terms for.")
@click.option("--out", help="Output folder (default: the config's `out`); a recipe's stage NAME writes OUT/NAME.")
@click.option("--epochs", type=click.IntRange(min=1), help="Train up to this epoch (default: the config's `epochs`).")
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="Continue from OUT/checkpoints/state.pt if present; --no-resume deletes OUT's checkpoints first.")
@click.option("--no-reevaluate", is_flag=True, help="Skip the real-bitstream re-evaluation of the Pareto front.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def train(configs, stage_name, dataset, tasks, out, epochs, resume, no_reevaluate, no_progress):
    """Train a codec for machines from the tasks' losses (Le 2020 §3.4), one checkpoint per epoch,
    then re-evaluate the Pareto-front checkpoints with real bitstreams. Works under torchrun.

    A recipe (a config with [[stage]] tables) runs its stages in order; several CONFIGs run in order
    too, as a chain: a config's `init` may name an earlier one's `out`."""
    import os
    import sys

    from icm.errors import UserError
    from icm.evaluation.config import parse_task
    from icm.training.config import check_inits, load_stages, relocate, retarget
    from icm.training.loop import TrainingDiverged
    from icm.training.loop import train as run

    files = [load_stages(c) for c in configs]  # every config is checked before the first run starts
    recipe = [(name or path, cfg) for path, stages in zip(configs, files) for name, cfg in stages]
    is_recipe = len(files) == 1 and files[0][0][0] is not None
    if stage_name and not is_recipe:
        raise UserError("--stage picks a stage of one recipe (a config with [[stage]] tables)")
    if len(files) > 1 and out:
        raise UserError("--out applies to one config or recipe; with a chain, set out in each config")
    if out and is_recipe:
        relocate(recipe, out)
    elif out:
        recipe[0][1].out = out
    runs = [(n, c) for n, c in recipe if n == stage_name] if stage_name else recipe
    if not runs:
        raise UserError(f"{configs[0]} has no stage {stage_name!r}; its stages: {', '.join(n for n, _ in recipe)}")
    if epochs and len(runs) > 1:
        raise UserError("--epochs applies to one run; pick a stage with --stage")
    specs = [parse_task(t) for text in tasks for t in text.split(",") if t.strip()]
    unknown = {t.name for t in specs} - {t.name for _, c in runs for t in c.tasks}
    if unknown:
        raise UserError(f"--tasks: no run here trains for {', '.join(sorted(unknown))}")
    for _, cfg in runs:
        retarget(cfg, dataset, specs)
        cfg.epochs = epochs or cfg.epochs
        cfg.reevaluate = cfg.reevaluate and not no_reevaluate
    check_inits(runs, recipe)
    from pathlib import Path

    from icm.faults import check_out_dir

    for _, cfg in runs:  # a file or a read-only folder is refused before any model loads
        check_out_dir(cfg.out, "--out" if out else "out")
        if cfg.export:
            check_out_dir(Path(cfg.export).parent, "export")
    for name, cfg in runs:
        if len(runs) > 1 and os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks
            click.echo(f"== {name} -> {cfg.out}")
        try:
            summary = run(cfg, resume=resume, progress=not no_progress)
        except TrainingDiverged as exc:
            click.echo(f"icm: error: {name}: {exc}", err=True)
            sys.exit(1)
        if summary is not None:  # rank 0
            _report(summary)
    from icm.training.loop import teardown_process_group

    teardown_process_group()


def _report(summary: dict) -> None:
    if summary["start_epoch"] > 1:
        click.echo(f"resumed at epoch {summary['start_epoch']}")
    click.echo(f"{len(summary['history'])} epoch checkpoint(s) in {summary['out']}/checkpoints; log.json, plot.png")
    for row in summary["pareto"] or []:
        click.echo(f"front: epoch {row['epoch']} {row['rate']}: est {_f(row['est_bpp'])} bpp, real {_f(row['bpp'])} bpp, "
                   f"score {_f(row['score_est'])} (forward) / {_f(row['score_real'])} (bitstream)")
    if summary["pareto"]:
        click.echo(f"{summary['out']}/pareto.json")
    if summary.get("export"):
        click.echo(f"final weights: {summary['model']}; exported (fp16) to {summary['export']}")


def _f(v) -> str:
    return "-" if v is None else f"{v:.4g}"
