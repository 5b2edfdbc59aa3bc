"""The ``icm`` command line. User errors end in one line on stderr and exit code 2, never a traceback;
faults of the run (a full disk, a dead worker, a damaged checkpoint) in one line and exit code 1."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from icm.errors import PEER_STOPPED_EXIT, IcmError, PeerStopped, RunFault, UserError

CONTEXT = {"help_option_names": ["-h", "--help"]}


class IcmGroup(click.Group):
    """The ``icm`` group. Commands from plugins (``icm_register_commands``) are added on first lookup of
    a name icm does not have, or when the commands are listed: ``icm --version`` and the built-in
    commands never wait for (or fail on) another plugin's commands."""

    _loaded_for = None  # the plugin set whose commands are in the group (tests swap plugin sets)
    _added: list[str] = []

    def list_commands(self, ctx):
        self.load_plugin_commands()
        return super().list_commands(ctx)

    def get_command(self, ctx, name):
        command = super().get_command(ctx, name)
        if command is None and self._loaded_for is not _plugins():
            self.load_plugin_commands()
            command = super().get_command(ctx, name)
        return command

    def load_plugin_commands(self) -> None:
        p = _plugins()
        if self._loaded_for is p:
            return
        for name in self._added:  # commands of a previous plugin set
            self.commands.pop(name, None)
        self._loaded_for, self._added = p, []
        for impl in p.pm.hook.icm_register_commands.get_hookimpls():
            collected = click.Group()  # a plugin may add commands, never replace existing ones
            try:
                impl.function(cli=collected)
                taken = sorted(set(collected.commands) & set(self.commands))
                if taken:
                    raise ValueError(f"tried to replace existing command(s) {', '.join(taken)}")
            except Exception as exc:
                p._fail(impl.plugin_name, "icm_register_commands", exc)
                continue
            for name, command in collected.commands.items():
                self.add_command(command, name)
                self._added.append(name)


@click.group(cls=IcmGroup, context_settings=CONTEXT)
@click.version_option(package_name="icm", prog_name="icm")
def cli():
    """Image coding for machines: encode once, evaluate every vision task on the same bitstream."""


def _plugins():
    from icm.plugins import get_plugins

    return get_plugins()


def _table(title: str, columns: list[str], rows: list[list]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for c in columns:
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(*[str(x) for x in r])
    Console(width=max(120, Console().width)).print(table)


def _emit_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


codec_options = [
    click.option("--checkpoint", type=click.Path(), help="Learned codecs: a checkpoint file, or a folder of zoo-named files."),
    click.option("--weights", type=click.Choice(["pretrained", "random"]), default=None,
                 help="Learned codecs: 'random' builds untrained (seeded) weights; only on request."),
    click.option("--device", default=None, help="torch device for learned codecs (default: cuda if available, else cpu)."),
]


def with_codec_options(f):
    for opt in reversed(codec_options):
        f = opt(f)
    return f


# -- listings -------------------------------------------------------------------------------------------
@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def codecs(as_json):
    """List registered codecs, their rate control and whether they can run here (no model is loaded)."""
    from icm.codecs import describe_codec

    rows = [describe_codec(entry) for entry in _plugins().codecs.entries()]
    if as_json:
        return _emit_json(rows)
    _table("codecs", ["name", "kind", "rate control", "available", "plugin", "description"],
           [[r["name"], r["kind"], r["rate_control"], "yes" if r["available"] else f"no: {r['unavailable_reason']}",
             r["plugin"], r["description"]] for r in rows])


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins(as_json):
    """List installed plugins: name, version, hooks and what each registered."""
    p = _plugins()
    p.run_all_register_hooks()  # so "registered" is filled in
    data = {
        "plugins": [{"name": i.name, "version": i.version, "builtin": i.builtin, "hooks": i.hooks,
                     "registered": i.registered} for i in p.info.values()],
        "failed": [{"name": f.plugin, "stage": f.stage, "error": f.error} for f in p.failures],
    }
    if as_json:
        return _emit_json(data)
    _table("plugins", ["name", "version", "hooks", "registered"],
           [[i["name"] + (" (built-in)" if i["builtin"] else ""), i["version"] or "-", ", ".join(i["hooks"]),
             "; ".join(f"{k}: {', '.join(v)}" for k, v in i["registered"].items()) or "-"] for i in data["plugins"]])
    if data["failed"]:
        _table("failed plugins (skipped)", ["name", "stage", "error"],
               [[f["name"], f["stage"], f["error"]] for f in data["failed"]])


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def tasks(as_json):
    """List registered tasks and the plugin that provides each."""
    rows = [{"name": e.name, "plugin": e.plugin, "metrics": e.meta.get("metrics", []),
             "description": e.meta.get("description", "")} for e in _plugins().tasks.entries()]
    if as_json:
        return _emit_json(rows)
    if not rows:
        click.echo("no tasks registered; install a task plugin (docs/install.md)")
        return
    _table("tasks", ["name", "metrics", "plugin", "description"],
           [[r["name"], ", ".join(r["metrics"]), r["plugin"], r["description"]] for r in rows])


# -- coding ---------------------------------------------------------------------------------------------
max_pixels_option = click.option(
    "--max-pixels", type=click.IntRange(min=1), default=None,
    help="Refuse images larger than this many pixels (default: $ICM_MAX_PIXELS, else 89478485, Pillow's limit).")


@cli.command()
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--codec", "codec_name", required=True, help="Registered codec name (see `icm codecs`).")
@click.option("--quality", "-q", default=None, help="The codec's rate index (quality, qp, ratio...).")
@click.option("--rate", type=float, default=None, help="Continuous rate in [0,1], for codecs that have one.")
@click.option("--scale", type=float, default=1.0, show_default=True, help="Resolution knob: 1, 0.75, 0.5 or 0.25.")
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder.")
@max_pixels_option
@with_codec_options
def encode(images, codec_name, quality, rate, scale, out_dir, max_pixels, checkpoint, weights, device):
    """Encode IMAGE... into OUT/<name>.icm, one self-describing bitstream per image."""
    from icm.codecs import open_codec
    from icm.images import load_image

    codec = open_codec(codec_name, checkpoint=checkpoint, weights=weights, device=device)
    rate_args = {"quality": quality, "rate": rate, "scale": scale}
    codec.check_rate(**rate_args)  # fail before any work on a bad rate
    codec.require_available()
    stems = [Path(p).stem for p in images]
    clashes = sorted({s for s in stems if stems.count(s) > 1})
    if clashes:
        raise UserError(f"several inputs would write the same output file: {', '.join(s + '.icm' for s in clashes)}")
    failed = 0
    for path in images:
        try:
            image = load_image(path, max_pixels=max_pixels)
            bs = codec.to_bitstream(image, **rate_args)
            target = Path(out_dir) / (Path(path).stem + ".icm")
            size = bs.save(target)
        except UserError as exc:
            if len(images) == 1:
                raise
            failed += 1
            click.echo(f"icm: error: {exc}", err=True)
            continue
        click.echo(f"{target}  {size} bytes  {size * 8 / bs.pixels:.4f} bpp")
    if failed:
        raise UserError(f"{failed} of {len(images)} image(s) failed; the others were written")


@cli.command()
@click.argument("file", type=click.Path())
@click.option("-o", "--out", "out_path", required=True, type=click.Path(dir_okay=False), help="Output image (.png).")
@max_pixels_option
@with_codec_options
def decode(file, out_path, max_pixels, checkpoint, weights, device):
    """Decode FILE.icm with the codec named in its header."""
    from icm.codecs import decode_file
    from icm.images import save_image

    image, bs = decode_file(file, max_pixels=max_pixels, checkpoint=checkpoint, weights=weights, device=device)
    save_image(image, out_path)
    click.echo(f"{out_path}  {bs.width}x{bs.height}  from {bs.codec} {bs.rate}")


@cli.command()
@click.argument("file", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def info(file, as_json):
    """Show the header of an icm bitstream (no decoding)."""
    from icm.bitstream import Bitstream

    bs = Bitstream.load(file)
    size = Path(file).stat().st_size
    data = {"file": file, "codec": bs.codec, "codec_version": bs.codec_version,
            "weights_hash": bs.weights_hash.hex(), "width": bs.width, "height": bs.height, "colour": bs.colour,
            "rate": bs.rate, "bytes": size, "bpp": size * 8 / bs.pixels,
            "streams": {k: len(v) for k, v in bs.streams.items()}}
    if bs.features is not None:
        data["features"] = {"split": bs.features.split, "shape": list(bs.features.shape)}
    if as_json:
        return _emit_json(data)
    for k, v in data.items():
        click.echo(f"{k:>13}: {v}")


def _add_builtin_commands() -> None:
    from icm.evaluation.command import evaluate
    from icm.training.command import train

    cli.add_command(evaluate)
    cli.add_command(train)


_add_builtin_commands()


def _quiet_libraries() -> None:
    """Libraries warn about their own deprecations on every import; users cannot act on those, so the
    CLI hides them (ICM_DEBUG=1 shows them). Task plugins hide their model libraries' the same way."""
    import os
    import warnings

    if os.environ.get("ICM_DEBUG"):
        return
    for module in ("compressai", "torch", "pkg_resources"):
        warnings.filterwarnings("ignore", category=UserWarning, module=module)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=module)
        warnings.filterwarnings("ignore", category=FutureWarning, module=module)


def _raised_at(exc: BaseException) -> str:
    """Where an unexpected exception came from (last two path parts and the line): without a
    traceback, the one place a bug report can start from."""
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    where = frames[-1]
    return f"; raised at {'/'.join(Path(where.filename).parts[-2:])}:{where.lineno}"


def main(argv: list[str] | None = None) -> None:
    _quiet_libraries()
    try:
        argv = list(sys.argv[1:] if argv is None else argv)
        # obj carries the arguments so a command can start copies of itself (icm evaluate --workers)
        cli.main(args=argv, prog_name="icm", standalone_mode=False, obj={"argv": argv})
    except click.exceptions.Abort as exc:
        if isinstance(exc.__context__, EOFError):  # click turns EOFError into Abort; it is no Ctrl-C
            eof = exc.__context__
            click.echo(f"icm: error: unexpected end of input ({str(eof).strip()[:200] or 'EOF'}{_raised_at(eof)})", err=True)
            sys.exit(1)
        click.echo("icm: aborted", err=True)
        sys.exit(130)
    except PeerStopped as exc:
        if not os.environ.get("ICM_LAUNCHED"):  # under torchrun nobody else explains it
            click.echo(f"icm: error: {exc}", err=True)
        sys.exit(PEER_STOPPED_EXIT)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2)
    except RunFault as exc:
        click.echo(f"icm: error: {exc}", err=True)
        sys.exit(1)
    except OSError as exc:  # a full disk, a read-only folder: a fault of the run, said in one line
        from icm.faults import fault_line

        line = fault_line(exc)
        if line is None:
            raise
        click.echo(f"icm: error: {line}", err=True)
        sys.exit(1)
    except IcmError as exc:
        click.echo(f"icm: error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    sys.exit(0)
