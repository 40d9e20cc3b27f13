"""On-phone harnesses: command construction and parsing of recorded device output (no phone here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import android
from benchmarks.device import read_device_result, table

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
