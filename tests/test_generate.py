"""The eager generate CLI: PNG output, determinism per seed, one-line errors with exit code 2."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
from PIL import Image

from runtime_py import generate


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "runtime_py.generate", *args], capture_output=True, text=True)


def test_writes_256px_png_with_timings(tmp_path, capsys):
    out = tmp_path / "a.png"
    assert generate.main(["--prompt", "a lighthouse at dusk", "--seed", "7", "--out", str(out), "--quiet"]) == 0
    img = Image.open(out)
    assert img.size == (256, 256) and img.mode == "RGB"
    text = capsys.readouterr().out
    for stage in ("text_encoder", "scale_00", "scale_09", "diffusion_head", "vae_decoder", "total"):
        assert stage in text


def test_same_seed_same_bytes_different_seed_different_image(tmp_path):
    paths = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        paths[name] = tmp_path / f"{name}.png"
        assert generate.main(["--prompt", "a lighthouse at dusk", "--seed", str(seed), "--out", str(paths[name]),
                              "--quiet"]) == 0
    a, b, c = (paths[k].read_bytes() for k in "abc")
    assert a == b
    assert a != c
    px_a, px_c = (list(Image.open(io.BytesIO(x)).getdata()) for x in (a, c))
    assert sum(p != q for p, q in zip(px_a, px_c)) > 0.5 * len(px_a)


def test_prompt_changes_the_image(tmp_path):
    for name, prompt in (("a", "a lighthouse at dusk"), ("b", "a bowl of ramen")):
        out = str(tmp_path / f"{name}.png")
        assert generate.main(["--prompt", prompt, "--seed", "1", "--out", out, "--quiet"]) == 0
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "b.png").read_bytes()


@pytest.mark.parametrize("args,needle", [
    (["--prompt", "   "], "--prompt is empty"),
    (["--prompt", "x", "--seed", "-3"], "'-3' is outside [0, 2^63 - 1]"),
    (["--prompt", "x", "--checkpoint", "/definitely/not/here"], "is not a folder"),
    (["--prompt", "x", "--bundle", "/definitely/not/here"], "has no manifest.json"),
    (["--prompt", "x", "--top-p", "1.5"], "--top-p must be in [0, 1]"),
])
def test_bad_arguments_one_line_exit_2(tmp_path, args, needle):
    out = tmp_path / "x.png"
    r = run_cli(*args, "--out", str(out))
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert not out.exists()


def test_help():
    r = run_cli("--help")
    assert r.returncode == 0 and "--prompt" in r.stdout and "--bundle" in r.stdout


def test_text_encoder_from_its_own_folder(tmp_path, default_hart):
    """--text-encoder DIR (official sample.py --text_model_path): a checkpoint whose Qwen2 lives elsewhere
    draws the same image as the model it was saved from."""
    import shutil

    from model import save

    ckpt = save(default_hart, tmp_path / "ckpt")
    shutil.move(ckpt / "text_encoder", tmp_path / "qwen")
    outs = {k: tmp_path / f"{k}.png" for k in ("default", "split")}
    assert generate.main(["--prompt", "a lighthouse at dusk", "--seed", "3", "--out", str(outs["default"]),
                          "--quiet"]) == 0
    assert generate.main(["--prompt", "a lighthouse at dusk", "--seed", "3", "--checkpoint", str(ckpt),
                          "--text-encoder", str(tmp_path / "qwen"), "--out", str(outs["split"]), "--quiet"]) == 0
    assert outs["default"].read_bytes() == outs["split"].read_bytes()
