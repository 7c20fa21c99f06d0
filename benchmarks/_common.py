"""Shared by the benchmark scripts: provenance and an atomic JSON write (a partial run is never lost)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


def write_result(results: dict[str, Any], out: Path, device: str = "cpu", compact: bool = False) -> Path:
    """Add package versions, hardware and date to ``results`` and write it to ``out`` atomically.

    ``compact`` writes without indentation (for results holding long per-mode lists).
    """
    from tdphonon.potentials import hardware_info, package_versions

    results["packages"] = package_versions()
    results["hardware"] = hardware_info(device)
    results["date"] = time.strftime("%Y-%m-%d")
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, separators=(",", ":")) if compact else json.dumps(results, indent=1))
    tmp.replace(out)
    return out
