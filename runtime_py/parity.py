"""python -m runtime_py.parity --bundle DIR: the parity gate of a bundle against eager PyTorch.

The reference is the fp32 eager model the bundle was exported from (the seeded default model, or
--checkpoint, whose weight hashes must match the manifest). Four checks, thresholds from the
manifest (per recipe); exit 1 when any fails, 2 when the bundle or the arguments are unusable:

1. golden: every method on the bundle's golden inputs vs its golden outputs (in call order, since the
   AR methods share the KV cache), i.e. exactly what a phone replays.
2. teacher_forced: eager and bundle in lockstep on other prompts/seeds; each bundle method gets the
   eager inputs. Logits are internal to the scale methods, so what is compared is what they output:
   sampled ids (identical noise, so a mismatch means the logits moved enough to change argmax(l + g))
   and SQNR / max-abs of the float outputs (x, f_hat, cond, e_last, z).
3. components (from the same lockstep run): text context SQNR, diffusion residual PSNR and VAE
   image PSNR for identical inputs.
4. end_to_end: the same seed through eager and through the bundle's own outputs; token agreement
   (all sampled ids of all scales) and final image PSNR.

Metrics: SQNR = 10 log10(sum ref^2 / sum (ref - got)^2); PSNR = 10 log10(peak^2 / MSE) with
peak 1 for images and max|ref| for the diffusion residual; token_agreement = fraction of equal ids
over all scales (1.0 means every scale matched exactly). tie_adjusted_agreement does not count a
mismatch where eager's own choice was a numerical tie: the top-2 gap of (guided logits + Gumbel) at
that position, recomputed by the eager model on the same inputs, is <= TIE_TOL. Two fp32 runtimes
with different summation order can legitimately flip such a position; anything else counts. In the
end-to-end check the bundle runs on its own outputs: token_agreement compares its ids with eager's
own run (the report lists eager's top-2 gap at every mismatch), closed_loop_agreement compares them
(tie-adjusted) with eager recomputed on the bundle's own inputs at every scale. Infinite values are
reported as 999.

Memory modes (manifest `memory.mode`: KV cache fp32/fp16/int8, attention query chunk): the mode is part
of the graphs, so the reference above is eager PyTorch in the same mode (golden/ comes from it) and
checks 1-4 keep the recipe's thresholds. 5. full_precision (only for a non-default mode): token
agreement and worst image PSNR of the bundle's end-to-end runs against the full-precision eager path
(fp32 cache, unchunked), thresholds in manifest `parity.full_precision`; same-mode eager's own drift
is reported next to it.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from model.hart import Hart, gumbel_from_uniform
from model.memory import with_memory_mode
from model.stages import MethodSpec, is_split, method_specs, split_method_specs
from runtime_py.bundle import Bundle, checkpoint_source
from runtime_py.cli import (
    FAILED_CHECK,
    OneLineParser,
    UserError,
    add_checkpoint_args,
    check_checkpoint_args,
    check_out_dir,
    cli_main,
    load_model,
)
from runtime_py.pipeline import EagerBackend, Generation, Pipeline
from runtime_py.thresholds import looser_than_documented, manifest_plan, parity_section

RUNS = (("a red fox standing in fresh snow", 11), ("an empty prompt test", 3))  # not the golden prompt
INF = 999.0
TIE_TOL = 1e-3  # logits + Gumbel units; fp32 XNNPACK vs eager logits differ by ~1e-5


def sqnr(ref: torch.Tensor, got: torch.Tensor) -> float:
    ref, got = ref.double(), got.double()
    noise = (ref - got).pow(2).sum().item()
    return INF if noise == 0 else min(INF, 10 * torch.log10(ref.pow(2).sum() / noise).item())


def psnr(ref: torch.Tensor, got: torch.Tensor, peak: float | None = None) -> float:
    ref, got = ref.double(), got.double()
    peak = ref.abs().max().item() if peak is None else peak
    mse = (ref - got).pow(2).mean().item()
    return INF if mse == 0 else min(INF, 10 * torch.log10(torch.tensor(peak ** 2 / mse)).item())


class Tally:
    """Token counts (equal, mismatched beyond a tie) and the worst float SQNR over method outputs."""

    def __init__(self):
        self.equal = self.total = self.hard = 0
        self.min_sqnr = INF
        self.rows: list[dict] = []

    def add(self, method: str, specs, ref: list[torch.Tensor], got: list[torch.Tensor],
            margin: torch.Tensor | None = None) -> None:
        for s, r, g in zip(specs, ref, got, strict=True):
            if tuple(g.shape) != tuple(r.shape):
                raise ValueError(f"{method}.{s.name}: bundle shape {tuple(g.shape)} != reference {tuple(r.shape)}")
            if s.dtype == "int64" and s.name != "idx":  # start_pos of the split layout: bookkeeping, not tokens
                if not torch.equal(r, g):
                    raise ValueError(f"{method}.{s.name}: bundle {g.tolist()} != reference {r.tolist()}")
                continue
            if s.dtype == "int64":
                diff = r != g
                hard = int((diff & (margin > TIE_TOL)).sum()) if margin is not None else int(diff.sum())
                eq = r.numel() - int(diff.sum())
                self.equal, self.total, self.hard = self.equal + eq, self.total + r.numel(), self.hard + hard
                row = {"method": method, "output": s.name, "token_agreement": eq / r.numel(),
                       "tie_flips": int(diff.sum()) - hard}
                if margin is not None and diff.any():
                    row["mismatch_margins"] = [round(float(x), 6) for x in margin[diff][:8]]
                self.rows.append(row)
            else:
                q = sqnr(r, g)
                self.min_sqnr = min(self.min_sqnr, q)
                self.rows.append({"method": method, "output": s.name, "sqnr_db": round(q, 2),
                                  "max_abs": float((r.double() - g.double()).abs().max())})

    @property
    def agreement(self) -> float:
        return self.equal / self.total if self.total else 1.0

    @property
    def tie_adjusted(self) -> float:
        return 1.0 - self.hard / self.total if self.total else 1.0

    @property
    def median_sqnr(self) -> float:
        vals = sorted(r["sqnr_db"] for r in self.rows if "sqnr_db" in r)
        return vals[len(vals) // 2] if vals else INF

    def values(self) -> dict[str, float]:
        return {"token_agreement": self.agreement, "tie_adjusted_agreement": self.tie_adjusted,
                "sqnr_db": self.min_sqnr, "sqnr_median_db": self.median_sqnr}


@contextlib.contextmanager
def captured_logits(hart: Hart) -> Iterator[dict[int, torch.Tensor]]:
    """Record hart.guided_logits per scale while eager stages run (an instance attribute shadows
    the method; nothing in the model changes)."""
    seen: dict[int, torch.Tensor] = {}
    orig = hart.guided_logits

    def spy(st, h, cond, cfg):
        out = orig(st, h, cond, cfg)
        seen[st.si] = out.detach().clone()
        return out

    hart.guided_logits = spy
    try:
        yield seen
    finally:
        del hart.guided_logits


def margins(specs: list[MethodSpec], logits: dict[int, torch.Tensor], inputs: dict) -> dict[str, torch.Tensor]:
    """Top-2 gap of (guided logits + Gumbel choice noise) per sampled position, per scale method."""
    out = {}
    for m in specs:
        names = [t.name for t in m.inputs]
        if m.component != "ar_transformer" or "noise_u" not in names:  # the split layout's body and prefill
            continue
        u = inputs[m.name][names.index("noise_u")]
        top2 = (logits[int(m.name[6:])] + gumbel_from_uniform(u.float())[0]).topk(2, dim=-1).values
        out[m.name] = top2[..., 0] - top2[..., 1]
    return out


def eager_replay(hart: Hart, specs: list[MethodSpec], inputs: dict) -> tuple[dict, dict]:
    """Eager outputs and choice margins for given per-method inputs (call order; KV state follows)."""
    be = reference_backend(hart, specs)
    with captured_logits(hart) as logits:
        outs = {m.name: be.run(m.name, inputs[m.name]) for m in specs}
    return outs, margins(specs, logits, inputs)


def _verdict(values: dict[str, float], limits: dict[str, float]) -> dict:
    failed = [f"{k} {values[k]:.4g} < {v:.4g}" for k, v in limits.items() if values[k] < v]
    return {"values": {k: round(v, 4) for k, v in values.items()}, "thresholds": limits, "passed": not failed,
            "failures": failed}


def golden_check(bundle: Bundle, backend, hart: Hart, limits: dict) -> dict:
    gold = bundle.golden()
    specs = bundle.specs
    inputs = {m.name: gold[(m.name, "in")] for m in specs}
    eager, margin = eager_replay(hart, specs, inputs)
    tally, consistent = Tally(), Tally()
    for m in specs:
        want = gold[(m.name, "out")]
        tally.add(m.name, m.outputs, want, backend.run(m.name, inputs[m.name]), margin.get(m.name))
        consistent.add(m.name, m.outputs, want, eager[m.name], margin.get(m.name))
    if consistent.tie_adjusted < 1 or consistent.min_sqnr < 60:
        raise ValueError("golden/ was not produced by this reference model (eager replay does not reproduce it)")
    return {**_verdict(tally.values(), limits), "rows": tally.rows}


def reference_runs(hart: Hart, specs: list[MethodSpec], cfg: float) -> list[tuple[Generation, dict]]:
    """Eager generations for RUNS with their per-scale choice margins."""
    eager = Pipeline(specs, reference_backend(hart, specs), hart.text.tokenizer)
    out = []
    for prompt, seed in RUNS:
        with captured_logits(hart) as logits:
            gen = eager.generate(prompt, seed, cfg, keep_trace=True)
        out.append((gen, margins(specs, logits, {k: v["in"] for k, v in gen.trace.items()})))
    return out


def lockstep(specs: list[MethodSpec], backend, refs: list[tuple[Generation, dict]], limits: dict,
             comp_limits: dict) -> tuple[dict, dict]:
    """Teacher-forced run over eager traces; returns (teacher_forced, components) results."""
    tally = Tally()
    comps = {"text_sqnr_db": INF, "diffusion_psnr_db": INF, "vae_psnr_db": INF}
    for ref, margin in refs:
        for m in specs:
            got = backend.run(m.name, ref.trace[m.name]["in"])
            want = ref.trace[m.name]["out"]
            if m.component == "ar_transformer":
                tally.add(m.name, m.outputs, want, got, margin.get(m.name))
            elif m.component == "text_encoder":
                comps["text_sqnr_db"] = min(comps["text_sqnr_db"], sqnr(want[0], got[0]))
            elif m.component == "diffusion_head":
                comps["diffusion_psnr_db"] = min(comps["diffusion_psnr_db"], psnr(want[0], got[0]))
            else:
                comps["vae_psnr_db"] = min(comps["vae_psnr_db"], psnr(want[0], got[0], peak=1.0))
    return {**_verdict(tally.values(), limits), "rows": tally.rows}, _verdict(comps, comp_limits)


def end_to_end(pipe: Pipeline, hart: Hart, refs: list[tuple[Generation, dict]], cfg: float,
               limits: dict, gens: list | None = None) -> tuple[dict, list]:
    raw, closed = Tally(), Tally()
    worst_psnr = INF
    rows, images = [], []
    for (prompt, seed), (ref, ref_margin) in zip(RUNS, refs, strict=True):
        gen = pipe.generate(prompt, seed, cfg, keep_trace=True)
        if gens is not None:
            gens.append(gen)
        shadow, margin = eager_replay(hart, pipe.specs, {k: v["in"] for k, v in gen.trace.items()})
        per_scale = {}
        for m in pipe.specs:
            if m.component == "ar_transformer" and m.name in ref.tokens:
                i = [t.name for t in m.outputs].index("idx")
                raw.add(m.name, m.outputs[i:i + 1], [ref.tokens[m.name]], [gen.tokens[m.name]], ref_margin[m.name])
                closed.add(m.name, m.outputs[i:i + 1], [shadow[m.name][i]], [gen.tokens[m.name]], margin[m.name])
                per_scale[m.name] = round(raw.rows[-1]["token_agreement"], 4)
        p = psnr(ref.image, gen.image, peak=1.0)
        worst_psnr = min(worst_psnr, p)
        flips = [r for r in raw.rows[-len(per_scale):] if "mismatch_margins" in r]
        rows.append({"prompt": prompt, "seed": seed, "image_psnr_db": round(p, 2), "token_agreement": per_scale,
                     "eager_margins_at_mismatches": {r["method"]: r["mismatch_margins"] for r in flips},
                     "tie_flips": sum(r["tie_flips"] for r in closed.rows[-len(per_scale):]),
                     "bundle_ms": round(sum(gen.timings_ms.values()), 1),
                     "eager_ms": round(sum(ref.timings_ms.values()), 1)})
        images.append((ref.image, gen.image))
    values = {"token_agreement": raw.agreement, "closed_loop_agreement": closed.tie_adjusted,
              "image_psnr_db": worst_psnr}
    return {**_verdict(values, limits), "rows": rows}, images


def reference_model(bundle: Bundle, checkpoint: Path | None, text_encoder: Path | None = None) -> Hart:
    """The fp32 eager model the manifest says the bundle came from, on the bundle's schedule."""
    from model.build import build, with_patch_nums
    from model.config import default_config

    src = bundle.manifest["model"]["source"]
    patch_nums = tuple(bundle.manifest["schedule"]["patch_nums"])
    if src["kind"] == "default-seeded":
        if checkpoint is not None:
            raise UserError("the bundle was exported from the default seeded model", "drop --checkpoint")
        hart = build(default_config(), seed=src["seed"])
    else:
        if checkpoint is None:
            raise UserError(f"the bundle was exported from checkpoint {src['name']!r}", "pass --checkpoint DIR")
        if checkpoint_source(checkpoint)["weights"] != src["weights"]:
            raise UserError(f"{checkpoint}: weight files differ from the ones the bundle was exported from",
                            "pass the checkpoint the bundle was exported from")
        hart = load_model(checkpoint, text_encoder)
    mode = bundle.manifest.get("memory", {}).get("mode", {})
    mode = mode.get("reference_mode", mode)  # Core ML: fp16 states, golden/ from the fp32-cache model
    return with_memory_mode(with_patch_nums(hart, patch_nums), mode.get("kv_cache"), mode.get("attn_chunk"))


def full_precision(hart: Hart, gens: list[Generation], same_mode: list[tuple[Generation, dict]], cfg: float,
                   limits: dict) -> dict:
    """Drift of the bundle's end-to-end runs (and, for comparison, of same-mode eager) from the
    full-precision eager path: fp32 KV cache, unchunked attention, same weights."""
    full = with_memory_mode(hart, "fp32", 0)
    pipe = Pipeline(method_specs(full), EagerBackend(full), full.text.tokenizer)
    counts = {"bundle": [0, 0], "eager": [0, 0]}
    worst = {"bundle": INF, "eager": INF}
    rows = []
    for (prompt, seed), gen, (same, _) in zip(RUNS, gens, same_mode, strict=True):
        ref = pipe.generate(prompt, seed, cfg)
        row = {"prompt": prompt, "seed": seed}
        for who, g in (("bundle", gen), ("eager", same)):
            eq = sum(int((g.tokens[k] == ref.tokens[k]).sum()) for k in ref.tokens)
            n = sum(ref.tokens[k].numel() for k in ref.tokens)
            counts[who][0] += eq
            counts[who][1] += n
            p = psnr(ref.image, g.image, peak=1.0)
            worst[who] = min(worst[who], p)
            row[who] = {"token_agreement": round(eq / n, 4), "image_psnr_db": round(p, 2)}
        rows.append(row)
    values = {"token_agreement": counts["bundle"][0] / counts["bundle"][1], "image_psnr_db": worst["bundle"]}
    eager = {"token_agreement": round(counts["eager"][0] / counts["eager"][1], 4),
             "image_psnr_db": round(worst["eager"], 2)}
    return {**_verdict(values, limits), "same_mode_eager": eager, "rows": rows}


def reference_backend(hart: Hart, specs: list[MethodSpec]):
    """The eager reference for `specs`: ONNX bundles carry the KV cache as a tensor (`kv_cache` in/out)."""
    if any(t.name == "kv_cache" for m in specs for t in m.inputs):
        from model.explicit_kv import FunctionalEagerBackend

        return FunctionalEagerBackend(hart)
    return EagerBackend(hart, split=is_split([m.name for m in specs]))


def contract_check(bundle: Bundle, hart: Hart) -> None:
    if bundle.backend == "onnx":
        from model.explicit_kv import explicit_kv_specs

        want = explicit_kv_specs(hart)  # the contract plus the explicit KV cache
    elif is_split([m.name for m in bundle.specs]):
        want = split_method_specs(hart)  # one transformer body + per-scale glue (export.executorch --ar-layout)
    else:
        want = method_specs(hart)
    if want != bundle.specs:
        names = [a.name for a, b in zip(want, bundle.specs, strict=False) if a != b] or ["method list"]
        raise UserError(f"bundle method contract differs from the reference model at {names[0]}",
                        "re-export the bundle from this model")


def checked_thresholds(bundle: Bundle, hart: Hart) -> dict:
    """The manifest's thresholds, once they are known to be at least as strict as the documented ones
    for its backend, recipe and memory mode (runtime_py/thresholds.py): the manifest is not signed, so
    the gate does not take its word for its own limits. Looser, missing or unknown limits: exit 1."""
    m = bundle.manifest
    parity = m.get("parity") or {}
    if not parity.get("thresholds"):
        raise UserError(f"{bundle.root}: manifest has no parity thresholds", "re-export the bundle")
    recipe = parity.get("recipe")
    text = (((m.get("quantization") or {}).get("components") or {}).get("text_encoder") or {}).get("dtype")
    try:
        documented = parity_section(bundle.backend, recipe, hart, manifest_plan(m), text or "int8")
    except (KeyError, TypeError, ValueError, AttributeError, StopIteration):
        raise UserError(f"{bundle.root}/manifest.json: parity recipe {recipe!r} has no documented thresholds for "
                        f"backend {bundle.backend!r}", "re-export the bundle", code=FAILED_CHECK) from None
    problems = looser_than_documented(parity, documented)
    if problems:
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise UserError(f"{bundle.root}/manifest.json: parity thresholds are looser than documented for "
                        f"{bundle.backend} {recipe} ({'; '.join(problems[:3])}{more})",
                        "re-export the bundle; the gate accepts only limits at least as strict as "
                        "runtime_py/thresholds.py", code=FAILED_CHECK)
    return parity["thresholds"]


def run_parity(bundle_dir: Path, checkpoint: Path | None = None, backend=None,
               text_encoder: Path | None = None) -> dict:
    from runtime_py.backends import create_backend

    bundle = Bundle.open(bundle_dir)
    hart = reference_model(bundle, checkpoint, text_encoder)
    contract_check(bundle, hart)
    limits = checked_thresholds(bundle, hart)
    be = backend if backend is not None else create_backend(bundle)
    cfg = bundle.default_cfg
    report: dict = {"bundle": str(bundle_dir), "backend": be.name, "recipe": bundle.manifest["parity"]["recipe"],
                    "tie_tol": TIE_TOL}
    report["golden"] = golden_check(bundle, be, hart, limits["golden"])
    refs = reference_runs(hart, bundle.specs, cfg)
    report["teacher_forced"], report["components"] = lockstep(bundle.specs, be, refs, limits["teacher_forced"],
                                                              limits["components"])
    pipe = Pipeline(bundle.specs, be, bundle.tokenizer())
    gens: list[Generation] = []
    report["end_to_end"], images = end_to_end(pipe, hart, refs, cfg, limits["end_to_end"], gens)
    report["memory_mode"] = bundle.manifest.get("memory", {}).get("mode", {"kv_cache": "fp32", "attn_chunk": 0})
    checks = ["golden", "teacher_forced", "components", "end_to_end"]
    drift = bundle.manifest["parity"].get("full_precision")
    if drift:
        report["full_precision"] = full_precision(hart, gens, refs, cfg, drift)
        checks.append("full_precision")
    report["passed"] = all(report[k]["passed"] for k in checks)
    report["_images"] = images
    return report


def markdown(r: dict) -> str:
    lines = [f"# Parity: {r['bundle']} ({r['backend']}, recipe {r['recipe']})", "",
             f"**{'PASS' if r['passed'] else 'FAIL'}**", "", f"memory mode: {r.get('memory_mode', {})}", "",
             "| check | metric | value | threshold | ok |",
             "|---|---|---|---|---|"]
    for k in ("golden", "teacher_forced", "components", "end_to_end", "full_precision"):
        for metric, v in r.get(k, {}).get("values", {}).items():
            lim = r[k]["thresholds"].get(metric)
            ok = "-" if lim is None else ("yes" if v >= lim else "**no**")
            lines.append(f"| {k} | {metric} | {v:.4g} | {'-' if lim is None else f'{lim:.4g}'} | {ok} |")
    lines += ["", "| prompt | seed | image PSNR dB | bundle ms | eager ms | tie flips | token agreement per scale |",
              "|---|---|---|---|---|---|---|"]
    for row in r["end_to_end"]["rows"]:
        agree = ", ".join(f"{v:.2f}" for v in row["token_agreement"].values())
        lines.append(f"| {row['prompt']} | {row['seed']} | {row['image_psnr_db']} | {row['bundle_ms']} | "
                     f"{row['eager_ms']} | {row['tie_flips']} | {agree} |")
    lines += ["", "Teacher-forced outputs (worst first):", "", "| method | output | value |", "|---|---|---|"]
    rows = sorted(r["teacher_forced"]["rows"], key=lambda x: x.get("sqnr_db", 100 * x.get("token_agreement", 1)))
    for row in rows[:12]:
        val = f"SQNR {row['sqnr_db']} dB" if "sqnr_db" in row else f"agreement {row['token_agreement']:.4f}"
        lines.append(f"| {row['method']} | {row['output']} | {val} |")
    return "\n".join(lines) + "\n"


def write_report(report: dict, folder: Path) -> None:
    import numpy as np
    from PIL import Image

    from runtime_py.images import to_uint8, write_atomic

    folder.mkdir(parents=True, exist_ok=True)
    images = report.pop("_images", [])
    write_atomic(folder / "parity.json", (json.dumps(report, indent=1) + "\n").encode())  # each file whole or absent
    write_atomic(folder / "parity.md", markdown(report).encode())
    if images:
        rows = [np.concatenate([to_uint8(a[0]), to_uint8(b[0])], axis=1) for a, b in images]
        buf = io.BytesIO()
        Image.fromarray(np.concatenate(rows, axis=0)).save(buf, format="PNG")
        write_atomic(folder / "parity.png", buf.getvalue())


def _manifest_backend(bundle_dir: Path) -> str | None:
    try:
        m = json.loads((bundle_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return None  # Bundle.open reports the real problem
    return m.get("backend") if isinstance(m, dict) else None


@cli_main("python -m runtime_py.parity")
def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="python -m runtime_py.parity",
                      description="Check an exported bundle against eager PyTorch (exit 1 if a threshold fails).")
    p.add_argument("--bundle", type=Path, required=True, help="bundle folder (manifest.json)")
    add_checkpoint_args(p, "checkpoint the bundle was exported from (if not default-seeded)")
    p.add_argument("--report", type=Path, help="write parity.json, parity.md and parity.png here")
    a = p.parse_args(argv)
    check_checkpoint_args(p, a)
    if not (a.bundle / "manifest.json").is_file():
        p.error(f"--bundle {a.bundle} has no manifest.json (export one with python -m export.executorch)")
    if a.report is not None:
        check_out_dir(p, "--report", a.report)  # before the gate runs, not after
    t0 = time.perf_counter()
    if _manifest_backend(a.bundle) == "coreml":  # Core ML can't execute off macOS: its own section of checks
        from runtime_py.coreml.parity import coreml_section, print_section
        from runtime_py.images import write_atomic

        sec = coreml_section(a.bundle, a.checkpoint, a.text_encoder)
        if a.report:
            a.report.mkdir(parents=True, exist_ok=True)
            write_atomic(a.report / "parity.json", (json.dumps(sec, indent=1) + "\n").encode())
        print_section(sec)
        return 0 if sec["status"] == "PASS" else 1
    report = run_parity(a.bundle, a.checkpoint, text_encoder=a.text_encoder)
    if a.report:
        write_report(report, a.report)
    report.pop("_images", None)
    print(markdown(report), end="")
    print(f"parity {'passed' if report['passed'] else 'FAILED'} in {time.perf_counter() - t0:.1f} s")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
