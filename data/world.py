"""A procedural world of captioned 256×256 images: one or two flat shapes on a coloured background.

Deterministic and infinite: scene i of a stream is a pure function of (seed, split, i). A scene's
*combination* (sizes, colours, shapes, positions, background; no jitter) decides its split by a
stable hash, so held-out captions never occur in training.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 256
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220),
    "yellow": (240, 210, 40), "white": (240, 240, 240), "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.09, "large": 0.17}  # half-extent as a fraction of the image side
ROWS = {"top": 0.25, "": 0.5, "bottom": 0.75}
COLS = {"left": 0.25, "": 0.5, "right": 0.75}
POSITIONS = tuple(" ".join(w for w in (r, c) if w) or "centre" for r in ROWS for c in COLS)
JITTER = 0.02  # ± fraction of the side: small enough that position words stay unambiguous
HELD_OUT_MOD = 10  # 1 combination in 10 is held out
SPLITS = ("train", "heldout")


@dataclass(frozen=True)
class Shape:
    size: str
    colour: str
    shape: str
    position: str

    def phrase(self) -> str:
        where = {"centre": "in the centre", "left": "on the left", "right": "on the right"}.get(
            self.position, f"at the {self.position}")
        return f"a {self.size} {self.colour} {self.shape} {where}"


@dataclass(frozen=True)
class Scene:
    shapes: tuple[Shape, ...]
    background: str
    jitter: tuple[tuple[float, float], ...] = ()  # per shape (dx, dy), fractions of the side

    @property
    def caption(self) -> str:
        return " and ".join(s.phrase() for s in self.shapes) + f" on a {self.background} background"

    @property
    def key(self) -> tuple:
        """The attribute combination (what a caption says), without jitter."""
        return (self.background, *((s.size, s.colour, s.shape, s.position) for s in self.shapes))


def position_xy(position: str) -> tuple[float, float]:
    """Centre (x, y) of a position word as fractions of the side."""
    if position == "centre":
        return 0.5, 0.5
    words = position.split()
    x = next((COLS[w] for w in words if w in COLS), 0.5)
    y = next((ROWS[w] for w in words if w in ROWS), 0.5)
    return x, y


def split_of(key: tuple) -> str:
    """Stable (sha256, not Python's salted hash) split of an attribute combination."""
    h = int.from_bytes(hashlib.sha256(repr(key).encode()).digest()[:8], "little")
    return "heldout" if h % HELD_OUT_MOD == 0 else "train"


def _separated(a: Shape, b: Shape) -> bool:
    """Two shapes may share a scene if their bounding discs (plus a gap) do not touch."""
    (ax, ay), (bx, by) = position_xy(a.position), position_xy(b.position)
    reach = 1.42 * (SIZES[a.size] + SIZES[b.size]) + 2 * JITTER + 0.03
    return (ax - bx) ** 2 + (ay - by) ** 2 >= reach ** 2


def random_scene(rng: np.random.Generator, two_prob: float = 0.25) -> Scene:
    """Any scene (either split). Shape colours differ from the background and from each other."""
    background = str(rng.choice(list(COLOURS)))
    n = 2 if rng.random() < two_prob else 1
    while True:
        colours = rng.choice([c for c in COLOURS if c != background], size=n, replace=False)
        shapes = tuple(
            Shape(str(rng.choice(list(SIZES))), str(c), str(rng.choice(SHAPES)), str(rng.choice(POSITIONS)))
            for c in colours)
        if n == 1 or _separated(*shapes):
            break
    jitter = tuple(tuple(float(v) for v in rng.uniform(-JITTER, JITTER, size=2)) for _ in shapes)
    return Scene(shapes, background, jitter)


def scene_at(seed: int, split: str, index: int, two_prob: float = 0.25) -> Scene:
    """Scene `index` of the stream (seed, split): rejection-sampled until it falls into `split`."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    while True:
        scene = random_scene(rng, two_prob)
        if split_of(scene.key) == split:
            return scene


def render(scene: Scene, size: int = IMAGE_SIZE) -> np.ndarray:
    """uint8 RGB [size, size, 3]; drawn at 2× and downsampled so edges are lightly anti-aliased."""
    s2 = 2 * size
    img = Image.new("RGB", (s2, s2), COLOURS[scene.background])
    draw = ImageDraw.Draw(img)
    for i, sh in enumerate(scene.shapes):
        x, y = position_xy(sh.position)
        dx, dy = scene.jitter[i] if scene.jitter else (0.0, 0.0)
        cx, cy, r = (x + dx) * s2, (y + dy) * s2, SIZES[sh.size] * s2
        fill = COLOURS[sh.colour]
        if sh.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif sh.shape == "square":
            draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:  # upward isosceles triangle filling the same bounding box
            draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
    return np.asarray(img.resize((size, size), Image.Resampling.BOX))


def stream(seed: int = 0, split: str = "train", start: int = 0, two_prob: float = 0.25) -> Iterator[Scene]:
    """Infinite deterministic scene stream."""
    i = start
    while True:
        yield scene_at(seed, split, i, two_prob)
        i += 1


def batch(seed: int, split: str, start: int, n: int, two_prob: float = 0.25) -> tuple[np.ndarray, list[Scene]]:
    """Scenes start..start+n-1 of a stream and their renders as uint8 [n, H, W, 3]."""
    scenes = [scene_at(seed, split, start + i, two_prob) for i in range(n)]
    return np.stack([render(s) for s in scenes]), scenes


def all_single_keys(split: str) -> list[tuple]:
    """Every one-shape attribute combination of a split, in a fixed order (for evaluation prompt sets)."""
    keys = []
    for bg in COLOURS:
        for size in SIZES:
            for colour in COLOURS:
                for shape in SHAPES:
                    for pos in POSITIONS:
                        key = (bg, (size, colour, shape, pos))
                        if colour != bg and split_of(key) == split:
                            keys.append(key)
    return keys


def scene_from_key(key: tuple) -> Scene:
    return Scene(tuple(Shape(*s) for s in key[1:]), key[0])
