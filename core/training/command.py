"""`icm train CONFIG [CONFIG ...]`: the command-line face of icm.training.loop."""

from __future__ import annotations

import click


@click.command()
@click.argument("configs", nargs=-1, required=True, type=click.Path(dir_okay=False), metavar="CONFIG...")
@click.option("--out", help="Output folder (default: the config's `out`).")
@click.option("--epochs", type=click.IntRange(min=1), help="Train up to this epoch (default: the config's `epochs`).")
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="Continue from OUT/checkpoints/state.pt if present; --no-resume deletes OUT's checkpoints first.")
@click.option("--no-reevaluate", is_flag=True, help="Skip the real-bitstream re-evaluation of the Pareto front.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def train(configs, out, epochs, resume, no_reevaluate, no_progress):
    """Train a codec for machines from the tasks' losses (Le 2020 §3.4), one checkpoint per epoch,
    then re-evaluate the Pareto-front checkpoints with real bitstreams. Works under torchrun.

    Several CONFIGs run in order, as a chain: a config's `init` may name an earlier one's `out`."""
    import os
    import sys

    from icm.errors import UserError
    from icm.training.config import load_config
    from icm.training.loop import TrainingDiverged
    from icm.training.loop import train as run

    if len(configs) > 1 and (out or epochs):
        raise UserError("--out and --epochs apply to one config; with a chain, set them in each config")
    cfgs = [load_config(c) for c in configs]  # every config is checked before the first run starts
    for config, cfg in zip(configs, cfgs):
        if out:
            cfg.out = out
        if epochs:
            cfg.epochs = epochs
        if no_reevaluate:
            cfg.reevaluate = False
        if len(cfgs) > 1 and os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks
            click.echo(f"== {config} -> {cfg.out}")
        try:
            summary = run(cfg, resume=resume, progress=not no_progress)
        except TrainingDiverged as exc:
            click.echo(f"icm: error: {config}: {exc}", err=True)
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
