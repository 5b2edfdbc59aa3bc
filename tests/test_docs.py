import inspect
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
