"""python -m quantization.curve: AR size vs parity for fp32, 8da8w, 8da4w and auto plans at two budgets.

Every point is measured the same way, in eager PyTorch with the exporters' torchao configs: AR
Linear weight bytes (the layers a plan decides; values + scales) against teacher-forced token
agreement and worst-scale CFG-logit SQNR versus fp32 eager on the parity gate's prompts (held out:
the auto search calibrates on other prompts). `--synthetic-0p7b DIR` first writes a random-weight
checkpoint with the official 0.7B architecture in the official layout (text encoder: official
width, 2 layers, byte vocabulary) and measures that; `--scales N` keeps the first N scales of the
schedule so the deep model's 2 x units sensitivity runs stay affordable on a CPU.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from model.hart import Hart
from quantization import auto
from quantization.sensitivity import write_results
from runtime_py.cli import (
    OneLineParser,
    add_checkpoint_args,
    check_checkpoint_args,
    check_group_size,
    check_out_dir,
    cli_main,
    finite_float,
    load_model,
)


def measure(hart: Hart, layers: dict[str, str], ref: auto.Reference, group_size: int) -> dict:
    with auto.Quantized(hart, layers, group_size) as q:
        r = auto.evaluate(q, ref)
    return {"agreement": round(r["token_agreement"], 4), "worst_sqnr_db": round(auto.db(max(r["noise"])), 2)}


def curve(hart: Hart, budgets: list[float], backend: str = "executorch", group_size: int = 32,
          granularity: str = "kind", log=print, runs: int = 2) -> dict:
    from runtime_py.parity import RUNS

    gate_runs = RUNS[:runs]
    low, mid, top = auto.SCHEMES[backend]
    us = [u for u in auto.units(hart.ar, granularity)
          if all(hart.ar.get_submodule(n).in_features % group_size == 0 for n in u.layers)]
    cfg = hart.cfg.sampler.cfg
    held_out = auto.reference(hart, cfg, gate_runs)
    points = []

    def point(name: str, layers: dict[str, str], extra: dict | None = None) -> None:
        nbytes = sum(auto.unit_bytes(u, layers[u.layers[0]], group_size) for u in us)
        params = sum(u.params for u in us)
        p = {"name": name, "ar_linear_bytes": round(nbytes), "bits_per_weight": round(8 * nbytes / params, 2),
             **measure(hart, layers, held_out, group_size), **(extra or {})}
        log(f"curve: {name}: {nbytes / 1e6:.2f} MB, held-out agreement {p['agreement']:.4f}, "
            f"worst SQNR {p['worst_sqnr_db']} dB")
        points.append(p)

    for s in (top, mid, low):
        point(s, {n: s for u in us for n in u.layers})
    plans, memo = {}, {}
    for b in budgets:
        plan = auto.search(hart, b, backend, group_size, log=log, granularity=granularity, memo=memo,
                           runs=auto.CALIBRATION[:runs])
        plans[str(b)] = plan.to_json()
        point(f"auto@{b}", plan.layers, {"budget": b, "calibration_agreement": round(plan.measured_agreement, 4),
                                         "units": plan.counts(), "search_seconds": plan.seconds})
    return {"model": hart.cfg.name, "patch_nums": list(hart.cfg.ar.patch_nums), "backend": backend,
            "group_size": group_size, "granularity": granularity, "units": len(us),
            "linear_params": sum(u.params for u in us), "held_out_runs": [list(r) for r in gate_runs],
            "points": points, "plans": plans}


def markdown(res: dict) -> str:
    lines = [f"AR size / parity ({res['model']}, scales {res['patch_nums']}, {res['backend']} schemes, "
             f"{res['units']} units of {res['granularity']}, {res['linear_params']:,} Linear params). Agreement: "
             "teacher-forced sampled tokens equal to fp32 eager on the gate's prompts (held out).", "",
             "| recipe | AR Linear MB | bits/weight | agreement | worst logit SQNR dB | units per scheme |",
             "|---|---|---|---|---|---|"]
    for p in res["points"]:
        lines.append(f"| {p['name']} | {p['ar_linear_bytes'] / 1e6:.2f} | {p['bits_per_weight']} "
                     f"| {p['agreement']:.4f} | {p['worst_sqnr_db']} | {p.get('units', '-')} |")
    return "\n".join(lines) + "\n"


def chart(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for p in res["points"]:
        auto_pt = p["name"].startswith("auto")
        ax.scatter(p["ar_linear_bytes"] / 1e6, p["agreement"], color="tab:red" if auto_pt else "tab:blue")
        ax.annotate(p["name"], (p["ar_linear_bytes"] / 1e6, p["agreement"]), textcoords="offset points",
                    xytext=(5, -10), fontsize=8)
    ax.set_xlabel("AR Linear weights (MB)")
    ax.set_ylabel("teacher-forced token agreement (held out)")
    ax.set_title(f"Size / parity: {res['model']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def synthetic_0p7b(path: Path, schedule: str = "512px") -> Path:
    """Write a random-weight official-layout checkpoint with the 0.7B architecture (text: 2 layers)."""
    from benchmarks.scale import scale_config
    from model.build import build
    from model.checkpoint import save

    if (path / "llm" / "model.safetensors").is_file():
        return path
    save(build(scale_config("hart-0.7b-1024px", schedule, 2)), path)
    return path


@cli_main("python -m quantization.curve")
def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="python -m quantization.curve", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group()
    add_checkpoint_args(p, "official-layout checkpoint (default: seeded default model)", src)
    src.add_argument("--synthetic-0p7b", type=Path, metavar="DIR",
                     help="write (if absent) and measure a random-weight 0.7B-architecture checkpoint here")
    p.add_argument("--budgets", type=finite_float, nargs="+", default=[0.8, 0.9])
    p.add_argument("--backend", choices=sorted(auto.SCHEMES), default="executorch")
    p.add_argument("--group-size", type=int, default=32)
    p.add_argument("--granularity", default="kind",
                   help="search units: per block qkv/proj/MLP (kind), whole blocks (block), or N consecutive "
                        "blocks (blocksN, e.g. blocks6)")
    p.add_argument("--runs", type=int, choices=(1, 2), default=2,
                   help="prompt/seed runs for calibration and for the held-out measurement (default 2)")
    p.add_argument("--scales", type=int, help="keep only the first N scales of the schedule")
    p.add_argument("--out", type=Path, required=True, help="output folder (curve.json, curve.md, curve.png)")
    a = p.parse_args(argv)
    if any(not 0 < b <= 1 for b in a.budgets):
        p.error(f"--budgets are token agreements in (0, 1], got {a.budgets}")
    check_group_size(p, a.group_size)
    check_checkpoint_args(p, a)
    check_out_dir(p, "--out", a.out)
    if a.granularity not in ("kind", "block") and not (a.granularity.startswith("blocks")
                                                        and a.granularity[6:].isdigit() and int(a.granularity[6:]) > 0):
        p.error(f"--granularity must be kind, block or blocksN, got {a.granularity!r}")
    from model import load
    from model.build import with_patch_nums

    t0 = time.perf_counter()
    if a.synthetic_0p7b is not None:
        hart = load(synthetic_0p7b(a.synthetic_0p7b), prefer_ema=False)  # safetensors: mapped, less transient RAM
    else:
        hart = load_model(a.checkpoint, a.text_encoder)
    if a.scales:
        if not 2 <= a.scales <= len(hart.cfg.ar.patch_nums):
            p.error(f"--scales must be in [2, {len(hart.cfg.ar.patch_nums)}], got {a.scales}")
        hart = with_patch_nums(hart, hart.cfg.ar.patch_nums[:a.scales])
    res = curve(hart, a.budgets, a.backend, a.group_size, a.granularity, log=lambda m: print(m, file=sys.stderr),
                runs=a.runs)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    print(write_results(a.out, "curve", res, markdown(res), chart))
    return 0


if __name__ == "__main__":
    sys.exit(main())
