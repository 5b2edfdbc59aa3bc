"""`icm train CONFIG`: the command-line face of icm.training.loop."""

from __future__ import annotations

import click


@click.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--out", help="Output folder (default: the config's `out`).")
@click.option("--epochs", type=click.IntRange(min=1), help="Train up to this epoch (default: the config's `epochs`).")
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="Continue from OUT/checkpoints/state.pt if present; --no-resume deletes OUT's checkpoints first.")
@click.option("--no-reevaluate", is_flag=True, help="Skip the real-bitstream re-evaluation of the Pareto front.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def train(config, out, epochs, resume, no_reevaluate, no_progress):
    """Train a codec for machines from the tasks' losses (Le 2020 §3.4), one checkpoint per epoch,
    then re-evaluate the Pareto-front checkpoints with real bitstreams. Works under torchrun."""
    from icm.training.config import load_config
    from icm.training.loop import train as run

    cfg = load_config(config)
    if out:
        cfg.out = out
    if epochs:
        cfg.epochs = epochs
    if no_reevaluate:
        cfg.reevaluate = False
    summary = run(cfg, resume=resume, progress=not no_progress)
    if summary is None:  # not rank 0
        return
    if summary["start_epoch"] > 1:
        click.echo(f"resumed at epoch {summary['start_epoch']}")
    click.echo(f"{len(summary['history'])} epoch checkpoint(s) in {summary['out']}/checkpoints; log.json, plot.png")
    for row in summary["pareto"] or []:
        click.echo(f"front: epoch {row['epoch']} {row['rate']}: est {_f(row['est_bpp'])} bpp, real {_f(row['bpp'])} bpp, "
                   f"score {_f(row['score_est'])} (forward) / {_f(row['score_real'])} (bitstream)")
    if summary["pareto"]:
        click.echo(f"{summary['out']}/pareto.json")


def _f(v) -> str:
    return "-" if v is None else f"{v:.4g}"
