"""Where icm finds its shipped configs and weights: ``$ICM_CONFIGS`` or the repository's configs/."""

import os
from pathlib import Path

from icm.errors import UserError


def configs_dir() -> Path:
    return Path(os.environ.get("ICM_CONFIGS") or Path(__file__).resolve().parents[1] / "configs")


def shipped(relative: str) -> Path:
    path = configs_dir() / relative
    if not path.exists():
        raise UserError(f"shipped file {relative} not found under {configs_dir()} (set ICM_CONFIGS to the repo's configs/)")
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
