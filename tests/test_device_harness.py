"""On-phone harnesses: command construction and parsing of recorded device output (no phone here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import android, ios
from benchmarks.device import read_device_result, table
from benchmarks.schema import summarize

DATA = Path(__file__).parent / "data"


def test_android_commands(tmp_path):
    cmd = android.commands(tmp_path / "b", "emulator-5554", 4)
    assert cmd["push"] == ["adb", "-s", "emulator-5554", "push", f"{tmp_path}/b/.",
                           "/sdcard/Android/data/org.hartmobile.demo/files/bundle/"]
    assert cmd["start"][-6:] == ["--ez", "benchmark", "true", "--ei", "runs", "4"]
    assert "org.hartmobile.demo/demo.app.MainActivity" in cmd["start"]
    assert android.commands(tmp_path, None, 1)["poll"][:2] == ["adb", "shell"]


def test_android_dry_run_prints_every_step(tmp_path, capsys):
    (tmp_path / "manifest.json").write_text("{}")
    assert android.main(["--bundle", str(tmp_path), "--dry-run", "--runs", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("$ adb") == 5 and "am start -W" in out


def test_recorded_device_output_is_parsed():
    r = read_device_result(DATA / "android_benchmark.json")
    vae = r["targets"][0]["stages"]["vae_decoder"]
    assert (vae["min_ms"], vae["median_ms"], vae["p90_ms"]) == (190.0, 200.0, 210.0)
    assert "| executorch-8da4w | vae_decoder | 190.00 | 200.00 | 210.00 |" in table(r)


def test_device_output_without_runs_is_rejected(tmp_path):
    bad = json.loads((DATA / "android_benchmark.json").read_text())
    bad["targets"][0]["stages"]["scale_00"]["runs_ms"] = []
    (tmp_path / "b.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="scale_00 has no runs_ms"):
        read_device_result(tmp_path / "b.json")


def test_missing_bundle_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        android.main(["--bundle", str(tmp_path / "nope")])
    assert e.value.code == 2 and "has no manifest.json" in capsys.readouterr().err


# ---- iOS (benchmarks/ios.py) ----------------------------------------------------------------------
# ios_xcodebuild.log is NOT recorded on a device: the xcodebuild lines around the result are written
# after Xcode 16's `xcodebuild test` output; the JSON between the markers is what DemoCore's
# Benchmark.emit printed on Linux (ios_demo/ci.sh chroot, zeros runner, manifest backend "coreml").
IOS_LOG = DATA / "ios_xcodebuild.log"
IOS = Path(__file__).parents[1] / "ios_demo"
UDID = "platform=iOS,id=00008130-000A1B2C3D4E5F60"


def coreml_bundle(tmp_path, manifest=None):
    b = tmp_path / "coreml-int4"
    b.mkdir()
    m = {"format": "hart-mobile-bundle", "backend": "coreml"} if manifest is None else manifest
    (b / "manifest.json").write_text(m if isinstance(m, str) else json.dumps(m))
    return b


def test_ios_commands(tmp_path):
    cmd = ios.commands(tmp_path / "coreml-int4", UDID, Path("x/HartDemo.xcodeproj"), 4)
    t = cmd["test"]
    x = t.index("xcodebuild")
    # TEST_RUNNER_* must be in xcodebuild's environment (as arguments they would be build settings)
    assert t[:x] == ["env", "TEST_RUNNER_HART_BENCHMARK_RUNS=4", "TEST_RUNNER_HART_BUNDLE_NAME=coreml-int4"]
    assert t[x + 1] == "test"
    assert t[t.index("-destination") + 1] == UDID
    assert t[t.index("-project") + 1] == "x/HartDemo.xcodeproj"
    assert t[t.index("-scheme") + 1] == "HartDemoBenchmark"
    assert "-only-testing:HartDemoBenchmarkTests/BenchmarkRunTests/testBenchmark" in t
    assert t[t.index("-parallel-testing-enabled") + 1] == "NO"  # parallel runs keep test stdout out of the log
    assert t[t.index("-resultBundlePath") + 1] == str(ios.RESULT)
    assert not any(a.startswith("DEVELOPMENT_TEAM") for a in t)
    signed = ios.commands(tmp_path / "b", UDID, Path("p"), 1, team="ABCDE12345")["test"]
    assert signed[-2:] == ["-allowProvisioningUpdates", "DEVELOPMENT_TEAM=ABCDE12345"]
    assert cmd["generate"] == ["xcodegen", "generate", "--spec", str(IOS / "project.yml")]


def test_ios_names_match_the_xcode_project_and_the_swift_test():
    spec = (IOS / "project.yml").read_text()
    assert "\n  HartDemoBenchmark:\n" in spec and "\n  HartDemoBenchmarkTests:\n" in spec
    assert "      - path: .build/BenchmarkBundle\n        type: folder\n" in spec
    assert ios.STAGE == IOS / ".build" / "BenchmarkBundle"
    test = (IOS / "BenchmarkTests" / "BenchmarkRunTests.swift").read_text()
    assert "final class BenchmarkRunTests: XCTestCase" in test and "func testBenchmark()" in test
    assert 'forResource: "BenchmarkBundle"' in test and "Benchmark.emit(result)" in test
    core = (IOS / "DemoCore" / "Sources" / "DemoCore" / "BenchmarkRequest.swift").read_text()
    for name in ('"HART_BENCHMARK_RUNS"', '"HART_BUNDLE_NAME"', f'"{ios.BEGIN}"', f'"{ios.END}"'):
        assert name in core, name


def test_ios_dry_run_prints_every_step(tmp_path, capsys):
    b = coreml_bundle(tmp_path)
    assert ios.main(["--bundle", str(b), "--destination", UDID, "--dry-run", "--runs", "2",
                     "--out", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "$ xcodegen generate --spec" in out and f"copy {b} -> {ios.STAGE}" in out
    assert "$ env TEST_RUNNER_HART_BENCHMARK_RUNS=2 TEST_RUNNER_HART_BUNDLE_NAME=coreml-int4 xcodebuild test" in out
    assert not (tmp_path / "r.xcodebuild.log").exists() and not (tmp_path / "r.json").exists()


def test_ios_recorded_log_is_parsed(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert ios.main(["--log", str(IOS_LOG), "--out", str(out)]) == 0
    assert "| coreml-int4 | vae_decoder | 0.10 | 0.12 | 0.12 |" in capsys.readouterr().out
    raw = json.loads(ios.extract_json(IOS_LOG.read_text(), "log"))
    assert json.loads(out.read_text()) == raw  # written as the phone printed it
    assert raw["backend"] == "coreml" and raw["settings"]["runs"] == 3
    t = raw["targets"][0]
    assert len(t["stages"]) == 14 and "tokenize" in t["stages"]
    for st in list(t["stages"].values()) + [t["end_to_end"]]:  # Swift's summary == Python's formula
        assert {k: st[k] for k in ("min_ms", "median_ms", "p90_ms")} == {
            k: v for k, v in summarize(st["runs_ms"]).items() if k != "runs_ms"}


def _log_variant(kind: str) -> str:
    lines = IOS_LOG.read_text().splitlines()
    b = lines.index(ios.BEGIN)
    if kind == "no markers":
        text = "\n".join(lines[:b] + lines[b + 3:]).replace("** TEST SUCCEEDED **", "** TEST FAILED **")
        return text + '\n    static let beginMarker = "HART_BENCHMARK_JSON_BEGIN"\n'  # not a whole line
    if kind == "no end":
        return "\n".join(lines[:b + 2] + lines[b + 3:])
    if kind == "malformed":
        return "\n".join(lines[:b + 1] + [lines[b + 1][:-40]] + lines[b + 2:])
    doc = json.loads(lines[b + 1])
    del doc["machine"]
    return "\n".join(lines[:b + 1] + [json.dumps(doc)] + lines[b + 2:])


@pytest.mark.parametrize("kind, message", [
    ("no markers", "no HART_BENCHMARK_JSON_BEGIN line: the benchmark test printed no result (the log says ** TEST "
                   "FAILED **)"),
    ("no end", "HART_BENCHMARK_JSON_BEGIN without a following HART_BENCHMARK_JSON_END"),
    ("malformed", "the text between the markers is not valid JSON"),
    ("schema", "benchmark JSON: missing .machine"),
])
def test_ios_bad_log_is_an_error_and_writes_nothing(tmp_path, capsys, kind, message):
    log, out = tmp_path / "x.log", tmp_path / "r.json"
    log.write_text(_log_variant(kind))
    assert ios.main(["--log", str(log), "--out", str(out)]) == 1
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [log]  # neither r.json nor r.json.part


def test_ios_last_of_several_results_is_used(capsys):
    one = json.loads(ios.extract_json(IOS_LOG.read_text(), "log"))
    two = {**one, "device": "second"}
    text = IOS_LOG.read_text() + f"{ios.BEGIN}\n{json.dumps(two)}\n{ios.END}\n"
    assert json.loads(ios.extract_json(text, "log"))["device"] == "second"
    assert "holds 2 results; using the last" in capsys.readouterr().err


@pytest.mark.parametrize("manifest, message", [
    (None, "has no manifest.json"),
    ({"format": "hart-mobile-bundle", "backend": "executorch"}, "is a 'executorch' bundle; the iOS demo runs Core ML"),
    ({"format": "other", "backend": "coreml"}, "not a hart-mobile bundle manifest"),
    ("{not json", "not readable JSON"),
])
def test_ios_rejects_a_bundle_that_is_not_core_ml(tmp_path, capsys, manifest, message):
    b = coreml_bundle(tmp_path, manifest if manifest is not None else {})
    if manifest is None:
        (b / "manifest.json").unlink()
    with pytest.raises(SystemExit) as e:
        ios.main(["--bundle", str(b), "--destination", UDID, "--dry-run"])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_ios_accepts_a_backend_object(tmp_path):
    b = coreml_bundle(tmp_path, {"format": "hart-mobile-bundle", "backend": {"name": "coreml", "compute_units": "all"}})
    assert ios.main(["--bundle", str(b), "--destination", UDID, "--dry-run", "--out", str(tmp_path / "r.json")]) == 0


def test_ios_missing_tools_are_one_line_errors(tmp_path, monkeypatch, capsys):
    b = coreml_bundle(tmp_path)
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    with pytest.raises(SystemExit) as e:
        ios.main(["--bundle", str(b), "--destination", UDID])
    assert e.value.code == 2 and "xcodebuild not found: this needs a Mac with Xcode" in capsys.readouterr().err
    fake = tmp_path / "bin" / "xcodebuild"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    with pytest.raises(SystemExit) as e:
        ios.main(["--bundle", str(b), "--destination", UDID])
    assert e.value.code == 2 and "xcodegen not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        ios.main(["--bundle", str(b), "--destination", "id=123"])
    assert e.value.code == 2 and "has no platform=" in capsys.readouterr().err


def _fake_xcodebuild(tmp_path, body: str) -> None:
    """A stand-in for xcodebuild (none on Linux): shows the test-runner variables it got, then `body`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "xcodebuild"
    fake.write_text('#!/bin/sh\necho "runs=$TEST_RUNNER_HART_BENCHMARK_RUNS name=$TEST_RUNNER_HART_BUNDLE_NAME '
                    f'args=$*"\n{body}\n')
    fake.chmod(0o755)


def test_ios_run_stages_the_bundle_passes_the_variables_and_parses_the_log(tmp_path, monkeypatch, capsys):
    b = coreml_bundle(tmp_path)
    stage = tmp_path / "ios" / ".build" / "BenchmarkBundle"
    stage.mkdir(parents=True)
    (stage / "stale.bin").write_text("from an earlier bundle")
    monkeypatch.setattr(ios, "STAGE", stage)
    monkeypatch.setattr(ios, "RESULT", tmp_path / "ios" / ".build" / "benchmark.xcresult")
    _fake_xcodebuild(tmp_path, f"cat '{IOS_LOG}'")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    out = tmp_path / "r.json"
    assert ios.main(["--bundle", str(b), "--destination", UDID, "--runs", "2", "--project", str(tmp_path / "P"),
                     "--out", str(out)]) == 0
    log = (tmp_path / "r.xcodebuild.log").read_text()
    assert "runs=2 name=coreml-int4 args=test -project" in log and f"-destination {UDID}" in log
    assert sorted(p.name for p in stage.iterdir()) == ["manifest.json"]
    assert json.loads(out.read_text())["targets"][0]["name"] == "coreml-int4"
    assert "| coreml-int4 | end_to_end |" in capsys.readouterr().out


def test_ios_failed_xcodebuild_names_its_log_and_errors(tmp_path, monkeypatch, capsys):
    b = coreml_bundle(tmp_path)
    monkeypatch.setattr(ios, "STAGE", tmp_path / "stage")
    monkeypatch.setattr(ios, "RESULT", tmp_path / "benchmark.xcresult")
    _fake_xcodebuild(tmp_path, "echo 'error: Signing for \"HartDemoBenchmarkTests\" requires a development team.'\n"
                               "echo '** TEST FAILED **'\nexit 65")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    out = tmp_path / "r.json"
    assert ios.main(["--bundle", str(b), "--destination", UDID, "--project", "P", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"xcodebuild failed (65); full log: {tmp_path / 'r.xcodebuild.log'}" in err
    assert "requires a development team" in err and "** TEST FAILED **" in err
    assert not out.exists()
