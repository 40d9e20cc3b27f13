"""The procedural world (data/world.py) and its analyser (data/analyse.py)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from data.analyse import ATTRIBUTES, analyse, degrade, score
from data.world import COLOURS, SHAPES, Scene, Shape, all_single_keys, batch, position_xy, render, scene_at, split_of


def test_stream_is_deterministic_and_seeded():
    a = [scene_at(7, "train", i) for i in range(20)]
    assert a == [scene_at(7, "train", i) for i in range(20)]
    assert np.array_equal(render(a[3]), render(scene_at(7, "train", 3)))
    assert a != [scene_at(8, "train", i) for i in range(20)]
    img = render(a[0])
    assert img.shape == (256, 256, 3) and img.dtype == np.uint8


def test_heldout_split_is_disjoint_from_training():
    train = {scene_at(0, "train", i).key for i in range(600)}
    held = {scene_at(0, "heldout", i).key for i in range(200)}
    assert not train & held
    assert all(split_of(k) == "train" for k in train) and all(split_of(k) == "heldout" for k in held)
    single_train, single_held = set(all_single_keys("train")), set(all_single_keys("heldout"))
    assert not single_train & single_held
    assert len(single_held) >= 64  # enough held-out one-shape prompts for the quality benchmark
    assert 0.05 < len(single_held) / (len(single_held) + len(single_train)) < 0.2


def test_scenes_are_readable_and_captions_plain():
    for i in range(300):
        s = scene_at(1, "train", i, two_prob=0.5)
        colours = [sh.colour for sh in s.shapes]
        assert s.background not in colours and len(set(colours)) == len(colours)
        words = s.caption.split()
        assert s.caption.endswith(f"on a {s.background} background")
        for sh in s.shapes:
            assert sh.colour in COLOURS and sh.shape in SHAPES and sh.colour in words and sh.shape in words
        if len(s.shapes) == 2:
            (ax, ay), (bx, by) = (position_xy(sh.position) for sh in s.shapes)
            assert (ax, ay) != (bx, by)
    example = Scene((Shape("small", "red", "circle", "top left"),), "blue")
    assert example.caption == "a small red circle at the top left on a blue background"
    assert Scene((Shape("large", "white", "square", "centre"), Shape("small", "black", "triangle", "right")),
                 "green").caption == ("a large white square in the centre and a small black triangle on the right"
                                      " on a green background")


@pytest.fixture(scope="module")
def renders():
    return batch(3, "heldout", 0, 500)


def test_analyser_accuracy_clean_and_degraded(renders):
    """≥ 98% per attribute on 500 ground-truth renders, clean and with blur σ=2 px + noise σ=8."""
    imgs, scenes = renders
    rng = np.random.default_rng(0)
    for blur, noise in ((0.0, 0.0), (2.0, 8.0)):
        hits = {a: [] for a in ATTRIBUTES}
        for img, scene in zip(imgs, scenes):
            x = degrade(img, blur, noise, rng) if blur else img
            for a, h in score(analyse(x), scene).items():
                hits[a].extend(h)
        acc = {a: float(np.mean(h)) for a, h in hits.items()}
        assert min(acc.values()) >= 0.98, (blur, noise, acc)


def test_analyser_verdicts_depend_on_the_image(renders):
    """Judging each render against the NEXT scene's truth must score badly (the metric is not vacuous)."""
    imgs, scenes = renders
    hits = {a: [] for a in ATTRIBUTES}
    for img, scene in zip(imgs[:100], scenes[1:101]):
        for a, h in score(analyse(img), scene).items():
            hits[a].extend(h)
    assert max(np.mean(h) for h in hits.values()) < 0.6


def test_analyse_cli_rejects_bad_arguments():
    r = subprocess.run([sys.executable, "-m", "data.analyse", "--n", "0"], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--n" in r.stderr
