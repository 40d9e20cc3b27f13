"""Shared pieces of the on-phone harnesses: run commands, read the app's benchmark JSON, print it."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

from benchmarks.schema import summarize, validate


def run(cmd: list[str], dry_run: bool, timeout: float = 600.0) -> str:
    print("$ " + shlex.join(cmd))
    if dry_run:
        return ""
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({r.returncode}): {(r.stderr or r.stdout).strip()[:400]}")
    return r.stdout


def read_device_result(path: Path) -> dict:
    """The phone's JSON (docs/benchmark-schema.md). Phone apps may write only runs_ms per stage; the
    derived fields are recomputed here from runs_ms so host and phone use one formula."""
    try:
        result = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a benchmark JSON ({e})") from e
    for t in result.get("targets", []):
        for name, st in t.get("stages", {}).items():
            if "runs_ms" not in st or not st["runs_ms"]:
                raise ValueError(f"{path}: stage {name} has no runs_ms")
            t["stages"][name] = {**st, **summarize(st["runs_ms"])}
        if t.get("end_to_end", {}).get("runs_ms"):
            t["end_to_end"] = {**t["end_to_end"], **summarize(t["end_to_end"]["runs_ms"])}
    return validate(result)


def table(result: dict) -> str:
    m = result.get("machine", {})
    lines = [f"Device: {m.get('device') or m.get('cpu', '?')} ({m.get('os', '?')})", "",
             "| target | stage | min ms | median ms | p90 ms |", "|---|---|---|---|---|"]
    for t in result["targets"]:
        for name, st in list(t["stages"].items()) + [("end_to_end", t.get("end_to_end"))]:
            if st:
                lines.append(f"| {t['name']} | {name} | {st['min_ms']:.2f} | {st['median_ms']:.2f} "
                             f"| {st['p90_ms']:.2f} |")
    return "\n".join(lines) + "\n"
