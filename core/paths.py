"""Where icm finds the files it ships: package data, read through importlib.resources.

The core's codec weights and experiment/training configs are the package ``icm.configs`` (the repo's
``configs/`` folder, mapped in pyproject.toml), so they travel inside the wheel. Each task plugin
ships its model config and weights inside its own package (``<package>/model/...``) and finds them
with :func:`package_file`. ``$ICM_CONFIGS`` points the core at another folder of the same layout.
"""

import os
from importlib import resources
from pathlib import Path

from icm.errors import UserError


def package_file(package: str, relative: str) -> Path:
    """A file shipped inside ``package`` (installed or editable); a missing one is a one-line error
    naming the distribution to reinstall."""
    try:
        root = resources.files(package)
    except ModuleNotFoundError:
        raise UserError(f"package {package} is not installed") from None
    path = Path(str(root.joinpath(relative)))
    if not path.exists():
        from importlib.metadata import packages_distributions

        dist = (packages_distributions().get(package) or [package])[0]  # the pip name of the package
        raise UserError(f"shipped file {relative} is missing from package {package} ({path}); "
                        f"reinstall it: pip install --force-reinstall {dist}")
    return path


def configs_dir() -> Path:
    """The core's shipped configs: ``$ICM_CONFIGS`` or the ``icm.configs`` package data."""
    override = os.environ.get("ICM_CONFIGS")
    return Path(override) if override else Path(str(resources.files("icm.configs")))


def shipped(relative: str) -> Path:
    path = configs_dir() / relative
    if not path.exists():
        raise UserError(f"shipped file {relative} not found under {configs_dir()}")
    return path


def read_toml(path, what: str) -> dict:
    """A TOML config as a dict; a missing or malformed file is a one-line UserError naming ``what``."""
    import tomllib

    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{what} {path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{what} {path}: {exc}") from None
