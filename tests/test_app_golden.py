"""docs/app_golden.json, which the Kotlin (android_demo) and Swift (ios_demo) tests assert, must still
be what the Python reference produces: a model or pipeline change without regenerating it would
leave the phone apps checking against stale numbers. Regenerate with
`PYTHONPATH=. .venv/bin/python tools/make_app_golden.py`.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "docs" / "app_golden.json"


def _load_tool():
    spec = importlib.util.spec_from_file_location("make_app_golden", ROOT / "tools" / "make_app_golden.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _close(a, b, path="$"):
    """Exact for ints/strings/structure; floats within 1e-5 relative (CPU kernels may differ in the last bits)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{path}: keys differ"
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), f"{path}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6), f"{path}: {a} != {b}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def test_app_golden_matches_the_reference():
    tool = _load_tool()
    fresh = json.loads(tool.dumps(tool.build()))
    committed = json.loads(GOLDEN.read_text(encoding="utf-8"))
    assert GOLDEN.stat().st_size < 2_000_000
    for key in ("schema_version", "fingerprint", "manifest", "rng", "pixels", "run"):
        _close(committed[key], fresh[key], f"$.{key}")
    by_name = {t["name"]: t for t in fresh["tokenizers"]}
    _close(committed["tokenizers"][0], by_name["byte_level"], "$.tokenizers[byte_level]")


def test_committed_bpe_tokenizer_cases_match_tokenizers():
    """The trained Qwen2-style BPE is committed as JSON; `tokenizers` must still give the committed ids."""
    from tokenizers import Tokenizer

    from model.tokenizer import PromptTokenizer

    committed = json.loads(GOLDEN.read_text(encoding="utf-8"))
    for t in committed["tokenizers"]:
        pt = PromptTokenizer(Tokenizer.from_str(json.dumps(t["tokenizer_json"])), max_tokens=t["max_tokens"])
        assert pt.pad_id == t["pad_id"]
        for c in t["cases"]:
            assert pt.encode_ids(c["text"]) == c["ids"], (t["name"], c["text"])
            assert int(pt.encode(c["text"])[1].sum()) == c["mask_sum"]
