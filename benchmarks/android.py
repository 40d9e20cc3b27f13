"""python -m benchmarks.android --bundle DIR: push a bundle, run the Android demo's benchmark mode, pull the JSON.

Needs adb and a phone with the demo app installed (android_demo/README.md). Nothing here has run on a
device in this repository's CI: tests check the command construction and the parsing of recorded
device output.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from benchmarks.device import read_device_result, run, table
from runtime_py.cli import OneLineParser, cli_main

APP_ID = "org.hartmobile.demo"
ACTIVITY = f"{APP_ID}/demo.app.MainActivity"
FILES = f"/sdcard/Android/data/{APP_ID}/files"


def commands(bundle: Path, serial: str | None, runs: int) -> dict[str, list[str]]:
    adb = ["adb"] + (["-s", serial] if serial else [])
    return {
        "clear": adb + ["shell", "rm", "-rf", f"{FILES}/bundle", f"{FILES}/benchmark.json"],
        "mkdir": adb + ["shell", "mkdir", "-p", f"{FILES}/bundle"],
        "push": adb + ["push", f"{bundle}/.", f"{FILES}/bundle/"],
        "start": adb + ["shell", "am", "start", "-W", "-n", ACTIVITY, "--ez", "benchmark", "true", "--ei", "runs",
                        str(runs)],
        "poll": adb + ["shell", "ls", f"{FILES}/benchmark.json"],
        "pull": adb + ["pull", f"{FILES}/benchmark.json"],
    }


@cli_main("python -m benchmarks.android")
def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="python -m benchmarks.android", description=__doc__)
    p.add_argument("--bundle", type=Path, required=True, help="ExecuTorch bundle folder")
    p.add_argument("--serial", help="adb device serial (adb devices)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the benchmark")
    p.add_argument("--out", type=Path, default=Path("android-benchmark.json"))
    p.add_argument("--dry-run", action="store_true", help="print the adb commands only")
    a = p.parse_args(argv)
    if not (a.bundle / "manifest.json").is_file():
        p.error(f"--bundle {a.bundle} has no manifest.json")
    if a.runs < 1:
        p.error("--runs must be >= 1")
    if not a.dry_run and shutil.which("adb") is None:
        p.error("adb not found: install Android platform-tools and connect a phone (or use --dry-run)")
    cmd = commands(a.bundle, a.serial, a.runs)
    try:
        for step in ("clear", "mkdir", "push", "start"):
            run(cmd[step], a.dry_run)
        deadline = time.monotonic() + a.timeout
        while not a.dry_run:
            try:
                run(cmd["poll"], False)
                break
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no benchmark.json after {a.timeout:.0f} s") from None
                time.sleep(5)
        run(cmd["pull"] + [str(a.out)], a.dry_run)
    except (RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if a.dry_run:
        return 0
    print(table(read_device_result(a.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
