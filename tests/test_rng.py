"""Tests for model/rng.py: Philox correctness, addressing, mappings and the frozen vectors file."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from model import rng

VECTORS = Path(__file__).resolve().parent.parent / "docs" / "rng_test_vectors.json"

# Random123 kat_vectors, philox4x32-10: counter, key, expected.
KAT = [
    ([0, 0, 0, 0], [0, 0], [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
    ([0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
    (
        [0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344],
        [0xA4093822, 0x299F31D0],
        [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1],
    ),
]


def _u32(values: list[int]) -> np.ndarray:
    return np.array(values, dtype=np.uint32)


def _ref_philox(ctr: list[int], key: list[int], rounds: int = 10) -> list[int]:
    """Scalar pure-int Philox written from the paper, to cross-check the vectorized lanes."""
    x0, x1, x2, x3 = ctr
    k0, k1 = key
    m = 0xFFFFFFFF
    for r in range(rounds):
        if r:
            k0, k1 = (k0 + 0x9E3779B9) & m, (k1 + 0xBB67AE85) & m
        p0, p1 = 0xD2511F53 * x0, 0xCD9E8D57 * x2
        x0, x1, x2, x3 = (p1 >> 32) ^ x1 ^ k0, p1 & m, (p0 >> 32) ^ x3 ^ k1, p0 & m
    return [x0, x1, x2, x3]


def _close_f32(got: np.ndarray, want: np.ndarray) -> bool:
    """The documented cross-language tolerance: 2 float32 ulps or 1e-6 absolute."""
    got = np.asarray(got, dtype=np.float32)
    want = np.asarray(want, dtype=np.float32)
    ulps = np.abs(got.view(np.int32).astype(np.int64) - want.view(np.int32).astype(np.int64))
    return bool(np.all((ulps <= 2) | (np.abs(got.astype(np.float64) - want) <= 1e-6)))


# --- Philox core -------------------------------------------------------------


@pytest.mark.parametrize(("ctr", "key", "expected"), KAT)
def test_random123_kat(ctr: list[int], key: list[int], expected: list[int]) -> None:
    assert rng.philox4x32(_u32(ctr), _u32(key)).tolist() == expected


@pytest.mark.parametrize(("ctr", "key", "expected"), KAT)
def test_reference_implementation_matches_kat(ctr: list[int], key: list[int], expected: list[int]) -> None:
    assert _ref_philox(ctr, key) == expected


def test_vectorized_matches_scalar_reference_on_random_inputs() -> None:
    gen = np.random.default_rng(1234)
    ctrs = gen.integers(0, 2**32, size=(64, 4), dtype=np.uint64).astype(np.uint32)
    for rounds in (7, 10):
        for key in gen.integers(0, 2**32, size=(4, 2), dtype=np.uint64).astype(np.uint32):
            got = rng.philox4x32(ctrs, key, rounds=rounds)
            want = [_ref_philox([int(c) for c in row], [int(k) for k in key], rounds) for row in ctrs]
            assert got.tolist() == want


def test_philox_keeps_leading_shape() -> None:
    ctrs = np.arange(24, dtype=np.uint32).reshape(2, 3, 4)
    out = rng.philox4x32(ctrs, _u32([5, 6]))
    assert out.shape == (2, 3, 4) and out.dtype == np.uint32
    assert out[1, 2].tolist() == _ref_philox(list(range(20, 24)), [5, 6])


# --- addressing ----------------------------------------------------------------


@pytest.mark.parametrize(("seed", "stream"), [(0, 0), (7, 1005), (2**40 + 3, 2**33 + 1), (2**63 - 1, 2**63 - 1)])
def test_stream_words_follow_counter_layout(seed: int, stream: int) -> None:
    words = rng.uint32_stream(seed, stream, 12)
    key = [seed & 0xFFFFFFFF, seed >> 32]
    for i in range(3):
        ctr = [i, 0, stream & 0xFFFFFFFF, stream >> 32]
        assert words[4 * i:4 * i + 4].tolist() == _ref_philox(ctr, key)


def test_block_index_high_word() -> None:
    # Word offset 4 * 2**32 is block 2**32: counter (0, 1, stream lo, stream hi).
    words = rng.uint32_stream(9, 3, 4, offset=4 * 2**32)
    assert words.tolist() == _ref_philox([0, 1, 3, 0], [9, 0])


@pytest.mark.parametrize("offset", [1, 2, 3, 4, 5, 13, 16_387 * 4 + 1])
def test_offset_equals_slice_of_longer_draw(offset: int) -> None:
    n = 70_000  # spans several internal chunks
    full = rng.uint32_stream(11, 2001, offset + n)
    assert np.array_equal(rng.uint32_stream(11, 2001, n, offset=offset), full[offset:])
    assert np.array_equal(rng.uniform(11, 2001, n, offset=offset), rng.uniform(11, 2001, offset + n)[offset:])
    assert np.array_equal(rng.gumbel(11, 2001, 9, offset=offset), rng.gumbel(11, 2001, offset + 9)[offset:])


def test_normal_offset_counts_words() -> None:
    full = rng.normal(3, 2000, 40)
    assert np.array_equal(rng.normal(3, 2000, 30, offset=10), full[10:])
    # An odd offset shifts the pairing, so it must not equal the slice.
    assert not np.array_equal(rng.normal(3, 2000, 30, offset=11), full[11:41])


def test_odd_normal_count_drops_last_sine() -> None:
    assert np.array_equal(rng.normal(5, 1, 7), rng.normal(5, 1, 8)[:7])


def test_int_and_tuple_shapes_draw_same_values() -> None:
    flat = rng.uniform(2, 0, 24)
    shaped = rng.uniform(2, 0, (2, 3, 4))
    assert shaped.shape == (2, 3, 4)
    assert np.array_equal(shaped.reshape(-1), flat)
    assert rng.normal(2, 0, (0, 3)).shape == (0, 3)


def test_different_seeds_and_streams_differ() -> None:
    base = rng.uint32_stream(7, 0, 64)
    others = [
        rng.uint32_stream(8, 0, 64),
        rng.uint32_stream(7 + 2**32, 0, 64),  # seed high word matters
        rng.uint32_stream(7, 1, 64),
        rng.uint32_stream(7, 2**32, 64),  # stream high word matters
    ]
    for other in others:
        assert np.mean(base == other) < 0.05


def test_same_arguments_are_deterministic() -> None:
    assert np.array_equal(rng.normal(42, 2003, 1000), rng.normal(42, 2003, 1000))


# --- mappings ------------------------------------------------------------------


def test_uniform_edges_are_exact_and_inside_unit_interval() -> None:
    u = rng.words_to_uniform(_u32([0, 0x1FF, 0x200, 0x80000000, 0xFFFFFE00, 0xFFFFFFFF]))
    assert u.dtype == np.float32
    expected = [2.0**-24, 2.0**-24, 3 * 2.0**-24, 0.5 + 2.0**-24, 1 - 2.0**-24, 1 - 2.0**-24]
    assert u.astype(np.float64).tolist() == expected
    assert np.all(np.isfinite(-np.log(-np.log(u.astype(np.float64)))))


def test_uniform_strictly_inside_unit_interval() -> None:
    u = rng.uniform(1, 0, 2_000_000)
    assert u.dtype == np.float32
    assert u.min() > 0.0 and u.max() < 1.0


def test_box_muller_pairs_consecutive_uniforms() -> None:
    u = rng.uniform(13, 2005, 2000).astype(np.float64)
    z = rng.normal(13, 2005, 2000).astype(np.float64)
    u1, u2, c, s = u[0::2], u[1::2], z[0::2], z[1::2]
    np.testing.assert_allclose(c * c + s * s, -2.0 * np.log(u1), rtol=1e-5, atol=1e-6)
    angle = np.mod(np.arctan2(s, c), 2 * math.pi) / (2 * math.pi)
    wrapped = np.minimum(np.abs(angle - u2), 1 - np.abs(angle - u2))
    assert wrapped.max() < 1e-5


def test_gumbel_is_double_log_of_uniform() -> None:
    u = rng.uniform(4, 1003, 500).astype(np.float64)
    want = (-np.log(-np.log(u))).astype(np.float32)
    assert np.array_equal(rng.gumbel(4, 1003, 500), want)


def test_normal_statistics() -> None:
    z = rng.normal(2024, 2000, 1_000_000).astype(np.float64)
    assert np.all(np.isfinite(z))
    assert abs(z.mean()) < 0.005  # 5 sigma
    assert abs(z.var() - 1.0) < 0.008  # 5 sigma
    assert abs(np.mean(z > 1.959964) - 0.025) < 0.001
    assert abs(np.mean(z[0::2] * z[1::2])) < 0.01  # the cos/sin halves are uncorrelated


def test_uniform_statistics() -> None:
    u = rng.uniform(99, 0, 1_000_000).astype(np.float64)
    assert abs(u.mean() - 0.5) < 0.0015
    assert abs(u.var() - 1 / 12) < 0.0008
    counts = np.bincount((u * 16).astype(np.int64), minlength=16)
    assert np.all(np.abs(counts - 62_500) < 5 * math.sqrt(62_500))


def test_gumbel_statistics() -> None:
    g = rng.gumbel(5, 1000, 1_000_000).astype(np.float64)
    assert abs(g.mean() - 0.5772156649) < 0.007
    assert abs(g.var() - math.pi**2 / 6) < 0.02


def test_torch_wrappers_match_numpy() -> None:
    torch = pytest.importorskip("torch")
    for fn_t, fn in ((rng.uniform_t, rng.uniform), (rng.normal_t, rng.normal), (rng.gumbel_t, rng.gumbel)):
        t = fn_t(6, 2001, (3, 5), offset=2)
        assert isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.shape == (3, 5)
        assert np.array_equal(t.numpy(), fn(6, 2001, (3, 5), offset=2))


# --- frozen vectors file ---------------------------------------------------------


def _vectors() -> dict:
    return json.loads(VECTORS.read_text())


def test_vectors_file_kat() -> None:
    data = _vectors()
    assert data["version"] == 1 and data["algorithm"] == "philox4x32-10"
    assert len(data["kat"]) == 3
    for kat in data["kat"]:
        ctr = _u32([int(w, 16) for w in kat["counter"]])
        key = _u32([int(w, 16) for w in kat["key"]])
        assert [f"{w:08x}" for w in rng.philox4x32(ctr, key).tolist()] == kat["expected"]


def test_vectors_file_cases_match_code() -> None:
    cases = _vectors()["cases"]
    triples = {(c["seed"], c["stream"], c["offset"]) for c in cases}
    assert {0, 7, 2**40 + 3} <= {s for s, _, _ in triples}
    assert {0, 1005, 2003} <= {s for _, s, _ in triples}
    assert {0, 5} <= {o for _, _, o in triples}
    for c in cases:
        seed, stream, offset = c["seed"], c["stream"], c["offset"]
        assert c["key"] == [f"{seed & 0xFFFFFFFF:08x}", f"{seed >> 32:08x}"]
        assert rng.uint32_stream(seed, stream, 16, offset).tolist() == c["uint32"]

        u = rng.uniform(seed, stream, 16, offset)
        assert [f"{b:08x}" for b in u.view(np.uint32).tolist()] == c["uniform_bits"]
        assert u.astype(np.float64).tolist() == c["uniform"]

        bits = {k: np.array([int(b, 16) for b in c[k + "_bits"]], dtype=np.uint32).view(np.float32)
                for k in ("normal", "gumbel")}
        assert np.array_equal(bits["normal"], np.array(c["normal"], dtype=np.float32))
        assert np.array_equal(bits["gumbel"], np.array(c["gumbel"], dtype=np.float32))
        # libm may differ in the last bit across platforms: use the documented tolerance.
        assert _close_f32(rng.normal(seed, stream, 16, offset), bits["normal"])
        assert _close_f32(rng.gumbel(seed, stream, 8, offset), bits["gumbel"])


def test_close_f32_rejects_real_differences() -> None:
    a = np.array([1.0, -2.5, 3e-3], dtype=np.float32)
    assert _close_f32(np.nextafter(a, np.float32(10)), a)
    assert not _close_f32(a + np.float32(1e-4), a)


# --- argument validation -------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seed": -1}, "seed must be in"),
        ({"seed": 2**63}, "seed must be in"),
        ({"seed": 1.0}, "seed must be an int"),
        ({"seed": True}, "seed must be an int"),
        ({"seed": "3"}, "seed must be an int"),
        ({"stream": -1}, "stream must be in"),
        ({"stream": 2**63}, "stream must be in"),
        ({"n": -1}, "n must be in"),
        ({"offset": -1}, "offset must be in"),
    ],
)
def test_invalid_arguments(kwargs: dict, message: str) -> None:
    args = {"seed": 1, "stream": 0, "n": 4, "offset": 0} | kwargs
    with pytest.raises(ValueError, match=message):
        rng.uint32_stream(**args)


def test_numpy_integer_arguments_accepted() -> None:
    assert np.array_equal(rng.uniform(np.int64(3), np.uint32(4), 5), rng.uniform(3, 4, 5))


@pytest.mark.parametrize("fn", [rng.uniform, rng.normal, rng.gumbel])
def test_invalid_shape_and_seed_in_mappings(fn) -> None:
    with pytest.raises(ValueError, match="shape entry"):
        fn(1, 0, (2, -1))
    with pytest.raises(ValueError, match="seed"):
        fn(-5, 0, 3)


def test_philox_rejects_wrong_dtype_or_shape() -> None:
    with pytest.raises(ValueError, match="counter"):
        rng.philox4x32(np.zeros(4, dtype=np.int64), _u32([0, 0]))
    with pytest.raises(ValueError, match="counter"):
        rng.philox4x32(np.zeros(3, dtype=np.uint32), _u32([0, 0]))
    with pytest.raises(ValueError, match="key"):
        rng.philox4x32(np.zeros(4, dtype=np.uint32), _u32([0, 0, 0]))
