"""Write docs/rng_test_vectors.json, the cross-language reference for model/rng.py.

Kotlin and Swift ports test against this file, and tests/test_rng.py checks
that the Python code still reproduces it, so a change to the noise can't go
unnoticed. Run: PYTHONPATH=. python tools/make_rng_vectors.py
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np

from model import rng

VERSION = 1
OUT = Path(__file__).resolve().parent.parent / "docs" / "rng_test_vectors.json"

# Random123 kat_vectors for philox4x32-10: (counter, key, expected output).
KAT = [
    ("00000000 00000000 00000000 00000000", "00000000 00000000",
     "6627e8d5 e169c58d bc57ac4c 9b00dbd8"),
    ("ffffffff ffffffff ffffffff ffffffff", "ffffffff ffffffff",
     "408f276d 41c83b0e a20bc7c6 6d5451fd"),
    ("243f6a88 85a308d3 13198a2e 03707344", "a4093822 299f31d0",
     "d16cfe09 94fdcceb 5001e420 24126ea1"),
]

# (seed, stream, offset). Covers the seed/stream high words, odd offsets, and a
# block index that crosses 2**32 so the counter's second word is exercised.
CASES = [
    (0, 0, 0),
    (0, 0, 5),
    (7, 1005, 0),
    (7, 2003, 5),
    (2**40 + 3, 2003, 0),
    (2**40 + 3, 1005, 5),
    (7, 2**33 + 1, 0),
    (7, 0, 4 * 2**32 - 6),
    (2**63 - 1, 2**63 - 1, 0),
]

N_WORDS = 16
N_GUMBEL = 8


def _hex(words: np.ndarray) -> list[str]:
    """Hex strings keep the exact bits readable and language-neutral."""
    return [f"{int(w):08x}" for w in words]


def _floats(values: np.ndarray) -> list[float]:
    """A float32 is exactly a float64, so Python's shortest float64 repr round-trips it."""
    return [float(v) for v in values]


def _bits(values: np.ndarray) -> list[str]:
    return _hex(np.asarray(values, dtype=np.float32).view(np.uint32))


def build() -> dict:
    """Everything a port needs to compare against, computed by model/rng.py."""
    kat = []
    for counter, key, expected in KAT:
        c = np.array([int(w, 16) for w in counter.split()], dtype=np.uint32)
        k = np.array([int(w, 16) for w in key.split()], dtype=np.uint32)
        got = _hex(rng.philox4x32(c, k))
        if got != expected.split():
            raise SystemExit(f"philox4x32 fails Random123 KAT: {got} != {expected}")
        kat.append({"counter": counter.split(), "key": key.split(), "expected": expected.split()})

    cases = []
    for seed, stream, offset in CASES:
        u = rng.uniform(seed, stream, N_WORDS, offset)
        z = rng.normal(seed, stream, N_WORDS, offset)
        g = rng.gumbel(seed, stream, N_GUMBEL, offset)
        cases.append({
            "seed": seed,
            "stream": stream,
            "offset": offset,
            "key": _hex(np.array([seed & 0xFFFFFFFF, seed >> 32], dtype=np.uint32)),
            "uint32": [int(w) for w in rng.uint32_stream(seed, stream, N_WORDS, offset)],
            "uniform": _floats(u),
            "uniform_bits": _bits(u),
            "normal": _floats(z),
            "normal_bits": _bits(z),
            "gumbel": _floats(g),
            "gumbel_bits": _bits(g),
        })

    return {
        "version": VERSION,
        "algorithm": "philox4x32-10",
        "spec": "docs/rng.md",
        "uniform_mapping": "((x >> 9) + 0.5) * 2**-23",
        "tolerance": {
            "uint32": "exact",
            "uniform": "exact (compare uniform_bits)",
            "normal": "2 float32 ulps or 1e-6 absolute",
            "gumbel": "2 float32 ulps or 1e-6 absolute",
        },
        "kat": kat,
        "cases": cases,
    }


def dumps(data: dict) -> str:
    """Indented JSON with each flat list on one line, so the file diffs and reads well."""
    text = json.dumps(data, indent=1)
    return re.sub(r"\[\s*([^\[\]{}]*?)\s*\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text) + "\n"


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else OUT
    out.write_text(dumps(build()))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
