"""Write docs/app_golden.json: the vectors the Android (Kotlin) and iOS (Swift) demo cores assert.

    PYTHONPATH=. .venv/bin/python tools/make_app_golden.py [--out docs/app_golden.json] [--check]

Contents (everything computed by the Python reference code, nothing hand-typed):
- `manifest`: the method contract of the default model (model.stages.method_specs) in the bundle
  manifest layout the apps parse (schema_version, methods with inputs/outputs/sources/rng streams).
- `split_methods`: the default model's split AR layout (model.stages.split_method_specs, the ExecuTorch
  exporter's default) exactly as export/executorch/exporter.py writes it into manifest["methods"]:
  `ar_prefill`, per scale a body call `ar_body_XX` (file ar_body.pte, entry ar_body) and its glue
  `scale_XX`, with `start_pos` (int64, not tokens) flowing from the previous glue to each body call.
- `rng`: pipeline-style multi-stream draws (runtime_py.pipeline.draw_noise) for a few specs.
- `tokenizers`: the byte-level default tokenizer and a small Qwen2-style byte-level BPE (trained here
  with `tokenizers`, same normalizer / Split regex / ByteLevel / added tokens as Qwen2), each with its
  full tokenizer.json and the ids `tokenizers` gives for prompts incl. non-ASCII and odd whitespace.
- `pixels`: float -> uint8 (runtime_py.images.to_uint8: trunc(clamp(x,0,1)*255) in float32) cases and
  one small CHW image with its RGBA bytes and ARGB ints.
- `bundle_digest`: manifest.json and manifest.sha256 exactly as export/bundle.py write_manifest writes
  them (the contract above plus the documented 8da4w parity section), for the apps' digest check.
- `run`: one full eager generation (prompt, seed, cfg) with every method's inputs and outputs,
  shrunk: small tensors in full, large ones as a fingerprint (first/last 16 values, sequential
  float64 sum, sum of |x|, max |x|), and every scale's sampled `idx` tokens in full.

`--check` regenerates in memory and exits 1 if the committed file differs (drift guard).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from model.build import default_model  # noqa: E402
from model.stages import BODY, TensorSpec, method_specs, split_method_specs  # noqa: E402
from model.tokenizer import MAX_TOKENS, PAD_TOKEN, PromptTokenizer, byte_level_tokenizer  # noqa: E402
from runtime_py.images import to_uint8  # noqa: E402
from runtime_py.pipeline import EagerBackend, Pipeline, draw_noise  # noqa: E402

SCHEMA_VERSION = 1  # of this golden file
MANIFEST_SCHEMA_VERSION = 1  # of the bundle manifest the apps accept
FULL_MAX = 64  # tensors with at most this many elements are stored in full
EDGE = 16  # head/tail length of a fingerprint

PROMPT, SEED, CFG = "a lighthouse at dusk", 7, 4.5

# Prompts for both tokenizers: ASCII, accents, CJK, emoji (4-byte UTF-8), combining marks (NFC),
# Unicode whitespace that the regexes must treat as \s (NBSP, NEL, VT, LS, ideographic space) and
# characters that are not \s (ZWSP, U+180E, FS), contractions, digits, an embedded special token,
# the empty prompt and a prompt longer than 300 tokens (truncation).
PROMPTS = [
    "a lighthouse at dusk",
    "Café naïve — 東京の夜景 🌸🌃",
    "e\u0301cole cafe\u0301 Å",
    "I'M HERE'S they've it'll 12345 ١٢٣ ½ Ⅷ",
    "tabs\tand\nnew lines\r\n  double  spaces  ",
    "nbsp\u00a0\u00a0x nel\x85\x85y vt\x0b\x0bz ls\u2028\u2028w ideo\u3000\u3000v",
    "zwsp\u200b\u200bx mvs\u180e\u180ey fs\x1c\x1cz",
    "before<|endoftext|>after <|im_start|>user",
    "",
    "repeat " * 60,
]


def f64(x) -> float:
    return float(x)


def fingerprint(t: torch.Tensor) -> dict:
    """Shrunk tensor: full values when small, else head/tail + sequential float64 sum, abs sum, max |x|."""
    a = t.detach().cpu().contiguous().numpy().reshape(-1)
    dtype = {torch.float32: "float32", torch.int64: "int64", torch.float16: "float16", torch.bool: "bool"}[t.dtype]
    d: dict = {"shape": list(t.shape), "dtype": dtype}
    if dtype in ("int64", "bool"):
        d["values"] = [int(v) for v in a]
        return d
    a64 = a.astype(np.float64)
    if a.size <= FULL_MAX:
        d["values"] = [f64(v) for v in a64]
        return d
    d["head"] = [f64(v) for v in a64[:EDGE]]
    d["tail"] = [f64(v) for v in a64[-EDGE:]]
    d["sum"] = f64(np.cumsum(a64)[-1])  # sequential, index order: every language can repeat it
    d["abs_sum"] = f64(np.cumsum(np.abs(a64))[-1])
    d["max_abs"] = f64(np.abs(a64).max())
    return d


def manifest_json(specs, hart) -> dict:
    return {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "model": hart.cfg.name,
        "backend": "reference",
        "image_size": hart.cfg.image_size,
        "default_cfg": float(hart.cfg.sampler.cfg),
        "tokenizer": {"file": "tokenizer.json", "max_tokens": MAX_TOKENS, "pad_token": PAD_TOKEN},
        "methods": [
            {"name": m.name, "component": m.component,
             "inputs": [s.to_json() for s in m.inputs], "outputs": [s.to_json() for s in m.outputs]}
            for m in specs
        ],
        "files": [],
    }


def split_methods(hart) -> list[dict]:
    """manifest["methods"] of the split layout, written by the exporter's own functions (build_manifest)."""
    from export.bundle import method_entry
    from export.executorch.exporter import method_file

    return [method_entry(s, method_file(s), entry=BODY if s.name.startswith(BODY) else s.name)
            for s in split_method_specs(hart)]


def rng_cases() -> list[dict]:
    cases = []
    for dist, shape, streams, seed in [
        ("uniform", (2, 1, 3, 5), [4, 1004], 7),
        ("normal", (3, 2, 5), [2000, 2008, 2007], 7),
        ("normal", (2, 3), [2001, 2002], (1 << 40) + 3),
        ("uniform", (1, 9), [(1 << 33) + 1], (1 << 63) - 1),
    ]:
        spec = TensorSpec("noise", shape, "float32", source="rng", rng={"dist": dist, "streams": streams})
        t = draw_noise(spec, seed).numpy().reshape(-1)
        cases.append({
            "seed": seed, "dist": dist, "shape": list(shape), "streams": streams,
            "values": [f64(v) for v in t.astype(np.float64)],
            "bits": [f"{int(b):08x}" for b in t.view(np.uint32)],
        })
    return cases


def qwen2_style_tokenizer():
    """A small byte-level BPE with Qwen2's tokenizer.json pipeline, trained on a fixed corpus."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    pattern = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")  # Qwen2's pre-tokenizer regex
    tok = Tokenizer(models.BPE(fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    corpus = [
        "a lighthouse at dusk, a lighthouse at dawn, the light of the house",
        "A small, fluffy white cat curled up in a round shape, sleeping peacefully on a warm sunny windowsill",
        "A bustling city street scene at dusk, featuring glowing street lamps and towering glass skyscrapers",
        "Café au lait in a café near the école; naïve résumé, façade and jalapeño",
        "東京の夜景 東京タワー 夜景がきれい 🌸🌸 🌃 桜の花",
        "they've it'll I'M HERE'S we're you'd 12345 67890 2024 ½",
        "repeat repeat repeat tabs\tand\nnew lines\r\n  double  spaces",
    ] * 4
    trainer = trainers.BpeTrainer(vocab_size=700, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[PAD_TOKEN, "<|im_start|>", "<|im_end|>"])
    tok.train_from_iterator(corpus, trainer=trainer)
    return tok


def tokenizer_cases(name: str, tok) -> dict:
    pt = PromptTokenizer(tok)
    data = json.loads(pt.to_str())
    cases = []
    for p in PROMPTS:
        ids, mask = pt.encode(p)
        ids = ids[0].tolist()
        n = int(mask.sum())
        # unpadded ids (truncated to max_tokens); the padded row is ids + [pad] * (max - len)
        raw = pt.encode_ids(p)
        assert raw == ids[: len(raw)] and all(i == pt.pad_id for i in ids[len(raw):])
        cases.append({"text": p, "ids": raw, "mask_sum": n})
    return {"name": name, "pad_id": pt.pad_id, "max_tokens": pt.max_tokens, "tokenizer_json": data, "cases": cases}


def pixel_cases() -> dict:
    vals = [np.float32(k) / np.float32(255) for k in range(256)]
    vals += [np.float32(v) for v in (-1.0, -0.0, 1e-9, 0.5, 0.99999994, 1.0, 1.0000001, 2.0, 0.1, 0.2, 0.3)]
    g = torch.Generator().manual_seed(3)
    vals += list(torch.rand(64, generator=g).numpy() * np.float32(1.2) - np.float32(0.1))
    x = torch.tensor(np.array(vals, dtype=np.float32))
    u8 = to_uint8(x.reshape(1, 1, -1).expand(3, 1, -1))[0, :, 0]  # the reference conversion itself
    img = (torch.rand(3, 2, 3, generator=g) * 1.4 - 0.2).float()
    hwc = to_uint8(img)  # [H, W, 3] uint8
    rgba, argb = [], []
    for y in range(hwc.shape[0]):
        for xx in range(hwc.shape[1]):
            r, gg, b = (int(c) for c in hwc[y, xx])
            rgba += [r, gg, b, 255]
            argb.append(((0xFF << 24) | (r << 16) | (gg << 8) | b) - (1 << 32))  # signed Int, as Android Color
    return {
        "values": [f64(v) for v in x.numpy().astype(np.float64)],
        "bits": [f"{int(b):08x}" for b in x.numpy().view(np.uint32)],
        "uint8": [int(v) for v in u8],
        "image": {"shape": [3, 2, 3], "chw": [f64(v) for v in img.numpy().reshape(-1).astype(np.float64)],
                  "rgba": rgba, "argb": argb},
    }


def recorded_run(hart, specs) -> dict:
    pipe = Pipeline(specs, EagerBackend(hart), hart.text.tokenizer)
    gen = pipe.generate(PROMPT, SEED, CFG, keep_trace=True)
    methods = []
    for m in specs:
        tr = gen.trace[m.name]
        methods.append({
            "name": m.name,
            "inputs": [dict(name=s.name, **fingerprint(t)) for s, t in zip(m.inputs, tr["in"])],
            "outputs": [dict(name=s.name, **fingerprint(t)) for s, t in zip(m.outputs, tr["out"])],
        })
    return {
        "prompt": PROMPT, "seed": SEED, "cfg": CFG,
        "tokens": {k: [int(v) for v in t.reshape(-1)] for k, t in gen.tokens.items()},
        "image": fingerprint(gen.image),
        "methods": methods,
    }


def bundle_digest_case(specs, hart) -> dict:
    """The exporter's own writer on a manifest with real float thresholds; the apps hash these bytes."""
    import tempfile

    from export.bundle import FORMAT, write_manifest
    from runtime_py.thresholds import parity_section

    manifest = {"format": FORMAT, **manifest_json(specs, hart), "parity": parity_section("executorch", "8da4w", hart)}
    with tempfile.TemporaryDirectory() as d:
        write_manifest(Path(d), manifest)
        return {"manifest_json": (Path(d) / "manifest.json").read_bytes().decode("utf-8"),
                "manifest_sha256": (Path(d) / "manifest.sha256").read_bytes().decode("utf-8")}


def build() -> dict:
    torch.manual_seed(0)
    hart = default_model()
    specs = method_specs(hart)
    return {
        "schema_version": SCHEMA_VERSION,
        "generator": "tools/make_app_golden.py",
        "fingerprint": {"full_max": FULL_MAX, "edge": EDGE,
                        "sum": "sequential float64 sum in C order; abs_sum likewise over |x|"},
        "manifest": manifest_json(specs, hart),
        "split_methods": split_methods(hart),
        "rng": rng_cases(),
        "tokenizers": [tokenizer_cases("byte_level", byte_level_tokenizer()),
                       tokenizer_cases("qwen2_style_bpe", qwen2_style_tokenizer())],
        "pixels": pixel_cases(),
        "bundle_digest": bundle_digest_case(specs, hart),
        "run": recorded_run(hart, specs),
    }


def dumps(doc: dict) -> str:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "app_golden.json")
    ap.add_argument("--check", action="store_true", help="exit 1 if --out differs from a fresh build")
    a = ap.parse_args(argv)
    text = dumps(build())
    if a.check:
        same = a.out.is_file() and a.out.read_text(encoding="utf-8") == text
        print(f"{a.out}: {'up to date' if same else 'DIFFERS from a fresh build'}")
        return 0 if same else 1
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(text, encoding="utf-8")
    print(f"wrote {a.out} ({len(text.encode()) / 1024:.1f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
