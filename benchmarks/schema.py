"""Benchmark result schema (docs/benchmark-schema.md): one JSON shape for host and phone runs."""

from __future__ import annotations

import statistics

SCHEMA = "hart-mobile/benchmark"
SCHEMA_VERSION = 1


def summarize(runs_ms: list[float]) -> dict:
    """min / median / p90 (nearest-rank) of a list of run times."""
    if not runs_ms:
        raise ValueError("no runs to summarize")
    s = sorted(runs_ms)
    p90 = s[min(len(s) - 1, max(0, int(round(0.9 * len(s) + 0.5)) - 1))]
    return {"min_ms": s[0], "median_ms": statistics.median(s), "p90_ms": p90, "runs_ms": list(runs_ms)}


def validate(result: dict) -> dict:
    """Structural check with errors that say which field is wrong; returns the result."""
    def need(obj, key, where):
        if key not in obj:
            raise ValueError(f"benchmark JSON: missing {where}.{key}")
        return obj[key]

    if need(result, "schema", "") != SCHEMA:
        raise ValueError(f"benchmark JSON: schema is {result['schema']!r}, expected {SCHEMA!r}")
    if need(result, "schema_version", "") != SCHEMA_VERSION:
        raise ValueError(f"benchmark JSON: schema_version {result['schema_version']} is not {SCHEMA_VERSION}")
    need(result, "machine", "")
    for i, t in enumerate(need(result, "targets", "")):
        where = f"targets[{i}]"
        need(t, "name", where)
        need(t, "backend", where)
        for name, st in need(t, "stages", where).items():
            for k in ("min_ms", "median_ms", "p90_ms", "runs_ms"):
                v = need(st, k, f"{where}.stages.{name}")
                if k != "runs_ms" and (isinstance(v, bool) or not isinstance(v, (int, float))):
                    raise ValueError(f"benchmark JSON: {where}.stages.{name}.{k} is not a number")
    return result
