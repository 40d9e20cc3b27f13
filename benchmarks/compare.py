"""python -m benchmarks.compare a.json b.json [--fail-above 5%]: side-by-side medians, ratios, regressions."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks.schema import validate
from runtime_py.cli import OneLineParser, UserError, cli_main, finite_float


def load(path: Path) -> dict:
    """A results JSON (untrusted file): any read or structure problem is one UserError naming the file."""
    fix = "give a results JSON written by python -m benchmarks.host"
    try:
        return validate(json.loads(path.read_text()))
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})", fix) from None
    except (ValueError, TypeError, AttributeError, KeyError) as e:  # JSON, UTF-8 or structure
        raise UserError(f"{path}: not a benchmark result ({e})", fix) from None


def rows(a: dict, b: dict) -> list[tuple[str, str, float, float]]:
    """(target, stage, median_a, median_b) for every stage both results have."""
    out = []
    tb = {t["name"]: t for t in b["targets"]}
    for ta in a["targets"]:
        other = tb.get(ta["name"])
        if other is None:
            continue
        for stage, st in list(ta["stages"].items()) + [("end_to_end", ta.get("end_to_end"))]:
            ob = other["stages"].get(stage) if stage != "end_to_end" else other.get("end_to_end")
            if st and ob:
                out.append((ta["name"], stage, st["median_ms"], ob["median_ms"]))
    return out


def parse_pct(text: str) -> float:
    """'5%' or '5' -> 0.05; a finite number >= 0 (nan would never flag a regression)."""
    v = finite_float(text.rstrip("%"))
    if v < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative (a slowdown limit must be >= 0)")
    return v / 100


@cli_main("python -m benchmarks.compare")
def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="python -m benchmarks.compare", description=__doc__)
    p.add_argument("a", type=Path, help="reference results JSON")
    p.add_argument("b", type=Path, help="new results JSON")
    p.add_argument("--fail-above", type=parse_pct, default=None,
                   help="exit 1 if any median is slower by more than this, e.g. 5%%")
    a = p.parse_args(argv)
    for path in (a.a, a.b):
        if not path.is_file():
            p.error(f"{path} is not a file (results JSON of python -m benchmarks.host)")
    ra, rb = load(a.a), load(a.b)
    limit = a.fail_above
    table = rows(ra, rb)
    if not table:
        p.error("the two results share no target/stage to compare")
    print(f"{'target':<22}{'stage':<16}{'a ms':>10}{'b ms':>10}{'b/a':>8}")
    worst = []
    for tgt, stage, ma, mb in table:
        ratio = mb / ma if ma > 0 else float("inf")
        flag = ""
        if limit is not None and ratio > 1 + limit:
            flag = "  REGRESSION"
            worst.append((tgt, stage, ratio))
        print(f"{tgt:<22}{stage:<16}{ma:>10.2f}{mb:>10.2f}{ratio:>8.2f}{flag}")
    if worst:
        print(f"{len(worst)} stage(s) slower than +{100 * limit:.1f}%", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
