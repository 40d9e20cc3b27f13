"""python -m benchmarks.ios --bundle DIR --destination SPEC: run the iOS demo's benchmark test, collect the JSON.

Copies the Core ML bundle to ios_demo/.build/BenchmarkBundle (a folder reference of the test target, so
it travels inside the test bundle to the phone), generates ios_demo/HartDemo.xcodeproj with xcodegen
(unless --project is given), runs `xcodebuild test` on the HartDemoBenchmark scheme for the one
benchmark test, and cuts the JSON the test prints between HART_BENCHMARK_JSON_BEGIN / _END lines out of
the xcodebuild log (kept next to --out). --log parses a recorded log instead of running anything.

Needs a Mac with Xcode, xcodegen and a signed-in team for a device (ios_demo/README.md). Nothing here
has run on a Mac or a device in this repository's CI: tests check the command construction and the
parsing of a log.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from benchmarks.device import read_device_result, run, table
from runtime_py.cli import OneLineParser, cli_main

IOS = Path(__file__).resolve().parents[1] / "ios_demo"
SPEC = IOS / "project.yml"
PROJECT = IOS / "HartDemo.xcodeproj"
STAGE = IOS / ".build" / "BenchmarkBundle"  # project.yml: folder reference of HartDemoBenchmarkTests
RESULT = IOS / ".build" / "benchmark.xcresult"  # holds the benchmark.json attachment too
SCHEME = "HartDemoBenchmark"
TEST = "HartDemoBenchmarkTests/BenchmarkRunTests/testBenchmark"
BEGIN, END = "HART_BENCHMARK_JSON_BEGIN", "HART_BENCHMARK_JSON_END"


def commands(bundle: Path, destination: str, project: Path, runs: int, team: str | None = None) -> dict:
    # xcodebuild hands TEST_RUNNER_<NAME> variables of its own environment to the test as <NAME>.
    env = ["env", f"TEST_RUNNER_HART_BENCHMARK_RUNS={runs}", f"TEST_RUNNER_HART_BUNDLE_NAME={bundle.name}"]
    test = env + ["xcodebuild", "test", "-project", str(project), "-scheme", SCHEME, "-destination", destination,
                  f"-only-testing:{TEST}", "-parallel-testing-enabled", "NO", "-resultBundlePath", str(RESULT)]
    if team:
        test += ["-allowProvisioningUpdates", f"DEVELOPMENT_TEAM={team}"]
    return {"generate": ["xcodegen", "generate", "--spec", str(SPEC)], "test": test}


def check_bundle(bundle: Path) -> None:
    """A Core ML bundle: manifest.json of format hart-mobile-bundle with backend coreml."""
    path = bundle / "manifest.json"
    try:
        m = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"--bundle {bundle} has no manifest.json") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not readable JSON ({e})") from e
    if not isinstance(m, dict) or m.get("format") != "hart-mobile-bundle":
        raise ValueError(f"{path}: not a hart-mobile bundle manifest (format is not 'hart-mobile-bundle')")
    backend = m.get("backend")
    name = backend.get("name") if isinstance(backend, dict) else backend
    if name != "coreml":
        raise ValueError(f"--bundle {bundle} is a {name!r} bundle; the iOS demo runs Core ML bundles "
                         "(python -m export.coreml)")


def stage_bundle(bundle: Path, stage: Path) -> None:
    """Replace the staging folder with a copy of the bundle (a new folder, so Xcode copies it again)."""
    shutil.rmtree(stage, ignore_errors=True)
    stage.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(bundle, stage)


def run_logged(cmd: list[str], log: Path, timeout: float, dry_run: bool) -> None:
    """Run with all output to `log` (follow it with tail -f); on failure, name the log and its errors."""
    print("$ " + shlex.join(cmd) + f" > {shlex.quote(str(log))} 2>&1")
    if dry_run:
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        try:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"xcodebuild did not finish in {timeout:.0f} s (log: {log})") from None
    if rc != 0:
        lines = log.read_text(errors="replace").splitlines()
        errors = [ln.strip() for ln in lines if "error:" in ln or ln.startswith("** ")][-6:]
        raise RuntimeError(f"xcodebuild failed ({rc}); full log: {log}" + "".join(f"\n  {e}" for e in errors))


def extract_json(log_text: str, source: str) -> str:
    """The text between the last BEGIN line and the END line after it (markers are whole lines)."""
    lines = [ln.strip() for ln in log_text.splitlines()]
    begins = [i for i, ln in enumerate(lines) if ln == BEGIN]
    if not begins:
        hint = " (the log says ** TEST FAILED **)" if "** TEST FAILED **" in log_text else ""
        raise ValueError(f"{source}: no {BEGIN} line: the benchmark test printed no result{hint}")
    if len(begins) > 1:
        print(f"note: {source} holds {len(begins)} results; using the last", file=sys.stderr)
    start = begins[-1] + 1
    try:
        end = lines.index(END, start)
    except ValueError:
        raise ValueError(f"{source}: {BEGIN} without a following {END} (test crashed or log cut short)") from None
    text = "\n".join(lines[start:end])
    try:
        json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{source}: the text between the markers is not valid JSON ({e})") from e
    return text


def collect(log: Path, out: Path) -> dict:
    """Extract, validate (benchmarks/schema.py), then write `out`: the JSON exactly as the phone printed it."""
    text = extract_json(log.read_text(errors="replace"), str(log))
    part = out.with_name(out.name + ".part")
    part.write_text(text + "\n")
    try:
        result = read_device_result(part)
    except ValueError:
        part.unlink()
        raise
    part.replace(out)
    return result


@cli_main("python -m benchmarks.ios")
def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="python -m benchmarks.ios", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, help="Core ML bundle folder (python -m export.coreml)")
    p.add_argument("--destination", help='xcodebuild -destination, e.g. "platform=iOS,id=UDID" '
                                         '(xcrun xctrace list devices) or "platform=iOS Simulator,name=iPhone 16"')
    p.add_argument("--project", type=Path, help="a HartDemo.xcodeproj already generated from ios_demo/project.yml "
                                                 "(default: xcodegen generates ios_demo/HartDemo.xcodeproj)")
    p.add_argument("--runs", type=int, default=5, help="timed generations after 1 warm-up (default 5)")
    p.add_argument("--team", help="Apple development team ID for signing on a device (DEVELOPMENT_TEAM)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds for xcodebuild test (default 3600)")
    p.add_argument("--out", type=Path, default=Path("ios-benchmark.json"),
                   help="result JSON (default ios-benchmark.json); the xcodebuild log is written next to it")
    p.add_argument("--log", type=Path, help="parse this recorded xcodebuild log instead of running")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    a = p.parse_args(argv)
    if a.runs < 1:
        p.error("--runs must be >= 1")
    try:
        if a.bundle is not None:
            check_bundle(a.bundle)
    except ValueError as e:
        p.error(str(e))
    if a.log is not None:
        if not a.log.is_file():
            p.error(f"--log {a.log} is not a file")
        log = a.log
    else:
        if a.bundle is None or not a.destination:
            p.error("--bundle and --destination are required (or --log FILE to parse a recorded log)")
        if "platform=" not in a.destination:
            p.error(f"--destination {a.destination!r} has no platform=, e.g. \"platform=iOS,id=UDID\"")
        needed = ["xcodebuild"] + ([] if a.project else ["xcodegen"])
        for tool in needed:
            if not a.dry_run and shutil.which(tool) is None:
                p.error(f"{tool} not found: this needs a Mac with Xcode"
                        + ("" if tool == "xcodebuild" else " and xcodegen (brew install xcodegen), or --project")
                        + " (or use --dry-run / --log)")
        cmd = commands(a.bundle, a.destination, a.project or PROJECT, a.runs, a.team)
        log = a.out.with_suffix(".xcodebuild.log")
        try:
            if not a.project:
                run(cmd["generate"], a.dry_run)
            print(f"copy {a.bundle} -> {STAGE}")
            if not a.dry_run:
                stage_bundle(a.bundle, STAGE)
                shutil.rmtree(RESULT, ignore_errors=True)  # xcodebuild refuses an existing -resultBundlePath
            run_logged(cmd["test"], log, a.timeout, a.dry_run)
        except (RuntimeError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        if a.dry_run:
            return 0
    try:
        result = collect(log, a.out)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(table(result))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
