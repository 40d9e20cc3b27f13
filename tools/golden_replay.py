"""Replay a bundle's golden/ with its own runtime only (no eager model): short enough for an emulated CPU.

    PYTHONPATH=. .venv/bin/python tools/golden_replay.py --bundle DIR [--out r.json]
    PYTHONPATH=. qemu-x86_64 -cpu Haswell .venv/bin/python tools/golden_replay.py --bundle DIR

Why: XNNPACK and onnxruntime pick kernels from CPUID, so their AVX2 paths can only be seen under
emulation, where the full parity gate (eager reference included) is too slow. Prints the AR token
agreement / SQNR and each other component's SQNR against the golden outputs (docs/portability.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from runtime_py.backends import create_backend
from runtime_py.bundle import Bundle
from runtime_py.parity import Tally, sqnr


def replay(bundle_dir: Path) -> dict:
    bundle = Bundle.open(bundle_dir)
    backend, gold = create_backend(bundle), bundle.golden()
    tally, comps = Tally(), {}
    for m in bundle.specs:
        got, want = backend.run(m.name, gold[(m.name, "in")]), gold[(m.name, "out")]
        if m.component == "ar_transformer":
            tally.add(m.name, m.outputs, want, got)
        else:
            comps[m.name] = round(sqnr(want[0], got[0]), 3)
    return {"ar": {k: round(v, 4) for k, v in tally.values().items()}, "component_sqnr_db": comps}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    res = replay(a.bundle)
    if a.out:
        a.out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
