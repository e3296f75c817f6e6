"""Read the ``greenllm_*`` ini keys the way pytest finds its ini file, for the CLI."""

from __future__ import annotations

import configparser
import tomllib
from pathlib import Path

from pytest_greenllm.options import INI_PREFIX

# pytest's own search order, from the directory upwards: the first file that holds a
# pytest section is the ini file, even if it sets none of our keys.
_CANDIDATES = (
    ("pytest.ini", "pytest"),
    (".pytest.ini", "pytest"),
    ("pyproject.toml", None),
    ("tox.ini", "pytest"),
    ("setup.cfg", "tool:pytest"),
)


def _from_toml(path: Path) -> dict[str, str] | None:
    with path.open("rb") as handle:
        data = tomllib.load(handle)
    section = data.get("tool", {}).get("pytest", {}).get("ini_options")
    if not isinstance(section, dict):
        return None
    return {
        key: ",".join(map(str, value)) if isinstance(value, list) else str(value)
        for key, value in section.items()
    }


def _from_cfg(path: Path, section: str) -> dict[str, str] | None:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(path, encoding="utf-8")
    if not parser.has_section(section):
        return None
    return dict(parser.items(section))


def find_ini(start: Path) -> tuple[Path | None, dict[str, str]]:
    """The ini file pytest would use from ``start``, and its ``greenllm_*`` values."""
    for directory in (start, *start.parents):
        for name, section in _CANDIDATES:
            path = directory / name
            if not path.is_file():
                continue
            values = _from_toml(path) if section is None else _from_cfg(path, section)
            if values is not None:
                return path, {k: v for k, v in values.items() if k.startswith(INI_PREFIX)}
    return None, {}
