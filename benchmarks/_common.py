"""Shared by the benchmark scripts: provenance and an atomic JSON write (a partial run is never lost)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


def _round_floats(obj: Any, digits: int) -> Any:
    if isinstance(obj, float):
        return float(f"{obj:.{digits}g}")
    if isinstance(obj, dict):
        return {k: _round_floats(v, digits) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_round_floats(v, digits) for v in obj]
    return obj


def write_result(results: dict[str, Any], out: Path, device: str = "cpu", compact: bool = False,
                 significant_digits: int | None = None) -> Path:
    """Add package versions, hardware and date to ``results`` and write it to ``out`` atomically.

    ``compact`` writes without indentation (for results holding long per-mode lists);
    ``significant_digits`` rounds every float written (``results`` itself is left as it is).
    """
    from tdphonon.potentials import hardware_info, package_versions

    results["packages"] = package_versions()
    results["hardware"] = hardware_info(device)
    results["date"] = time.strftime("%Y-%m-%d")
    tmp = out.with_suffix(".tmp")
    data = results if significant_digits is None else _round_floats(results, significant_digits)
    tmp.write_text(json.dumps(data, separators=(",", ":")) if compact else json.dumps(data, indent=1))
    tmp.replace(out)
    return out
