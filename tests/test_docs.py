import inspect
import re
from pathlib import Path

from icm import hookspecs

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_every_hookspec_is_in_the_hook_reference():
    reference = (DOCS / "plugins" / "hooks.md").read_text()
    specs = [n for n, f in inspect.getmembers(hookspecs, inspect.isfunction) if n.startswith("icm_")]
    assert specs, "no hookspecs found"
    missing = [n for n in specs if f"## {n}" not in reference]
    assert not missing, f"hooks missing from docs/plugins/hooks.md: {missing}"


def test_every_cli_command_is_in_the_cli_reference():
    from icm.cli import cli

    reference = (DOCS / "cli.md").read_text()
    missing = [n for n in cli.commands if f"icm {n}" not in reference]
    assert not missing, f"commands missing from docs/cli.md: {missing}"


def test_every_dataset_annotation_key_is_in_the_hook_reference():
    from icm.datasets import ANNOTATION_KEYS

    reference = (DOCS / "plugins" / "hooks.md").read_text()
    missing = [k for k in ANNOTATION_KEYS if f"| `{k}` |" not in reference]
    assert not missing, f"annotation keys missing from docs/plugins/hooks.md: {missing}"


def test_rate_control_fields_are_in_the_hook_reference():
    import dataclasses

    from icm.codecs import RateControl

    reference = (DOCS / "plugins" / "hooks.md").read_text()
    missing = [f.name for f in dataclasses.fields(RateControl) if f"`{f.name}`" not in reference]
    assert not missing, f"RateControl fields missing from docs/plugins/hooks.md: {missing}"


def test_the_readme_names_every_hook_and_command():
    from icm.cli import cli

    readme = (DOCS.parent / "README.md").read_text()
    specs = [n for n, f in inspect.getmembers(hookspecs, inspect.isfunction) if n.startswith("icm_")]
    assert [n for n in specs if n not in readme] == []
    assert [n for n in cli.commands if f"icm {n}" not in readme] == []


# -- docs/icm_codec.md: the architecture facts that drift when the code or the shipped weights change --
def _table(path: Path, header: str) -> list[list[str]]:
    """The cells of the markdown table in ``path`` whose header row starts with ``header``."""
    lines = path.read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(header)]
    assert len(starts) == 1, f"{path.name}: expected one table headed {header!r}"
    rows = []
    for line in lines[starts[0] + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def _count(cell: str) -> int:
    """A parameter-count cell: '1,434,275', '**1,434,275**', '768 + 768' or '3,904 (192 of them ...)'."""
    return sum(int(n.replace(",", "")) for n in re.findall(r"\d[\d,]*", cell.split("(")[0]))


def _parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_icm_codec_doc_states_the_shipped_weights_context_gain_levels_and_size():
    from icm.codecs.icm_codec import ICMCodec

    rows = _table(DOCS / "icm_codec.md", "| codec | context model | gain levels | parameters |")
    assert {r[0] for r in rows} == {"`icm-omni`", "`icm-omni-aux`", "`icm-omni-mse`"}
    for codec, context, levels, parameters in rows:
        net = ICMCodec(name=codec.strip("`")).net
        assert ("yes" if net.context is not None else "no") == context, codec
        assert net.config["num_gains"] == int(levels), codec
        assert _parameters(net) == _count(parameters), codec


def test_icm_codec_doc_counts_every_module_of_the_architecture():
    from icm.codecs.icm_codec import ICMNet

    net = ICMNet(context=True)  # the default widths, with every optional part
    counts = {name: _parameters(m) for name, m in net.named_children() if _parameters(m)}
    aux, context = set(ICMNet.AUX_MODULES), {"context"}
    totals = {"primary total": sum(n for m, n in counts.items() if m not in aux | context),
              "total with aux branch": sum(n for m, n in counts.items() if m not in context)}
    documented = set()
    for part, _, _, parameters in _table(DOCS / "icm_codec.md", "| Part | Layers | Output | Parameters |"):
        total = part.strip("*")
        if total in totals:
            assert totals.pop(total) == _count(parameters), part
            continue
        modules = re.findall(r"`(\w+)`", part)
        assert modules and sum(counts[m] for m in modules) == _count(parameters), part
        documented.update(modules)
    assert not totals, f"totals missing from docs/icm_codec.md: {list(totals)}"
    assert documented == set(counts), f"modules the table does not count: {set(counts) - documented}"
