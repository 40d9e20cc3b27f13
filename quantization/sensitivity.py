"""python -m quantization.sensitivity: quantize one group of AR layers at a time, measure the damage.

For every group (each block; each linear kind across blocks: qkv, proj, mlp, ada, head, context_embed,
word_embed) only that group is quantized with the recipe (torchao, same configs as the exporters);
teacher-forced CFG logits of every scale are compared with fp32 eager: SQNR (dB) and top-1
agreement. Groups are ranked by their worst-scale SQNR — the ones to keep in higher precision first.
"""

from __future__ import annotations

import copy
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from model.hart import Hart
from model.stages import method_specs
from quantization.recipes import AR_KEEP_PREFIXES, torchao_config
from runtime_py.cli import (
    OneLineParser,
    add_checkpoint_args,
    check_checkpoint_args,
    check_group_size,
    check_out_dir,
    cli_main,
    finite_float,
    load_model,
    seed_int,
    utf8_text,
)
from runtime_py.pipeline import EagerBackend, Pipeline

KINDS = {  # linear kind -> FQN predicate
    "qkv": lambda n: n.endswith("attn.qkv_proj"),
    "proj": lambda n: n.endswith("attn.proj"),
    "mlp": lambda n: ".ffn." in n,
    "block_ada": lambda n: n.startswith("blocks.") and ".ada_lin" in n,
    "head": lambda n: n == "head" or n.startswith("head_nm."),
    "context_embed": lambda n: n == "context_embed",
    "word_embed": lambda n: n == "word_embed",
}


def linear_names(ar: nn.Module, group_size: int, recipe: str = "8da4w") -> list[str]:
    """Linears the exporters quantize (quantization/recipes.py rules: level embedding and diffusion head
    stay float; per-group int4 needs in_features divisible by the group size)."""
    return [n for n, m in ar.named_modules()
            if isinstance(m, nn.Linear) and not n.startswith(AR_KEEP_PREFIXES)
            and not (recipe == "8da4w" and m.in_features % group_size)]


def groups(ar: nn.Module, group_size: int, recipe: str = "8da4w") -> dict[str, list[str]]:
    names = linear_names(ar, group_size, recipe)
    out = {f"block{i}": [n for n in names if n.startswith(f"blocks.{i}.")] for i in range(len(ar.blocks))}
    for kind, match in KINDS.items():
        out[kind] = [n for n in names if match(n)]
    return {k: v for k, v in out.items() if v}


def quantized_copy(hart: Hart, layers: list[str], recipe: str, group_size: int) -> Hart:
    from torchao.quantization import quantize_

    q = copy.deepcopy(hart)
    wanted = set(layers)
    quantize_(q.ar, torchao_config(recipe, group_size), filter_fn=lambda m, fqn: fqn in wanted)
    return q


@dataclass
class Forcing:
    """What teacher forcing fixes: the prompt context and the fp32 run's f_hat after every scale."""

    context: torch.Tensor
    mask: torch.Tensor
    f_hats: list[torch.Tensor]  # f_hat after scales 0 .. SN-2


def reference_forcing(hart: Hart, prompt: str, seed: int, cfg: float) -> Forcing:
    gen = Pipeline(method_specs(hart), EagerBackend(hart), hart.text.tokenizer).generate(prompt, seed, cfg,
                                                                                          keep_trace=True)
    ctx, mask = gen.trace["scale_00"]["in"][:2]
    f_hats = [gen.trace[f"scale_{st.si:02d}"]["out"][1] for st in hart.steps[:-1]]
    return Forcing(ctx, mask, f_hats)


@torch.no_grad()
def teacher_forced_logits(hart: Hart, forcing: Forcing, cfg: float) -> list[torch.Tensor]:
    """CFG logits of every scale; each model builds its own inputs (prefill, word embedding, level
    embedding) from the forced context and f_hat, so every quantized layer is exercised."""
    hart.reset_cache()
    cfg_t = torch.tensor([cfg])
    x, pos, cond, pos_off = hart.prefill(forcing.context, forcing.mask)
    out = []
    for st in hart.steps:
        if st.si > 0:
            x = hart.next_tokens(hart.steps[st.si - 1], forcing.f_hats[st.si - 1])
        h = hart.hidden(st, x, cond, pos if st.si == 0 else pos_off)
        out.append(hart.cfg_logits(st, h, cond, cfg_t))
    return out


def sqnr_db(ref: torch.Tensor, test: torch.Tensor) -> float:
    noise = (ref - test).pow(2).sum().item()
    return float("inf") if noise == 0 else 10 * torch.log10(torch.tensor(ref.pow(2).sum().item() / noise)).item()


def compare(ref: list[torch.Tensor], test: list[torch.Tensor]) -> dict:
    sq = [sqnr_db(r, t) for r, t in zip(ref, test)]
    top1 = [(r.argmax(-1) == t.argmax(-1)).float().mean().item() for r, t in zip(ref, test)]
    return {"sqnr_db": sq, "top1": top1, "min_sqnr_db": min(sq), "min_top1": min(top1)}


def run(hart: Hart, recipe: str, group_size: int, prompt: str, seeds: list[int], cfg: float, progress=None) -> dict:
    inputs = {s: reference_forcing(hart, prompt, s, cfg) for s in seeds}
    ref = {s: teacher_forced_logits(hart, inputs[s], cfg) for s in seeds}
    grp = groups(hart.ar, group_size, recipe)
    grp["all"] = linear_names(hart.ar, group_size, recipe)
    results = {}
    items = progress(grp.items(), "groups") if progress else grp.items()
    for name, layers in items:
        q = quantized_copy(hart, layers, recipe, group_size)
        per_seed = [compare(ref[s], teacher_forced_logits(q, inputs[s], cfg)) for s in seeds]
        n_scales = len(per_seed[0]["sqnr_db"])
        results[name] = {
            "layers": layers,
            "params": sum(hart.ar.get_submodule(n).weight.numel() for n in layers),
            "sqnr_db": [min(p["sqnr_db"][i] for p in per_seed) for i in range(n_scales)],
            "top1": [min(p["top1"][i] for p in per_seed) for i in range(n_scales)],
        }
        results[name]["min_sqnr_db"] = min(results[name]["sqnr_db"])
        results[name]["min_top1"] = min(results[name]["top1"])
    ranked = sorted((k for k in results if k != "all"), key=lambda k: results[k]["min_sqnr_db"])
    return {"recipe": recipe, "group_size": group_size, "seeds": seeds, "prompt": prompt, "cfg": cfg,
            "ranking": ranked, "groups": results}


def markdown(res: dict) -> str:
    lines = [f"Sensitivity ({res['recipe']}, group {res['group_size']}): teacher-forced CFG logits vs fp32, "
             f"worst over seeds {res['seeds']}; most sensitive first.", "",
             "| group | params | min SQNR dB | min top-1 | SQNR per scale |", "|---|---|---|---|---|"]
    for k in res["ranking"] + ["all"]:
        g = res["groups"][k]
        per = " ".join(f"{v:.1f}" for v in g["sqnr_db"])
        lines.append(f"| {k} | {g['params']} | {g['min_sqnr_db']:.1f} | {g['min_top1']:.3f} | {per} |")
    return "\n".join(lines) + "\n"


def chart(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = res["ranking"]
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.barh(names, [res["groups"][k]["min_sqnr_db"] for k in names], color="tab:blue")
    ax.axvline(res["groups"]["all"]["min_sqnr_db"], color="tab:red", ls="--", label="all layers quantized")
    ax.set_xlabel("worst-scale logits SQNR (dB), higher is safer")
    ax.set_title(f"Per-group sensitivity to {res['recipe']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(folder: Path, stem: str, res: dict, md: str, draw) -> str:
    """<stem>.json, <stem>.md and <stem>.png (drawn by `draw(res, path)`) in `folder`; returns the markdown."""
    from runtime_py.images import atomic_file, write_atomic

    write_atomic(folder / f"{stem}.json", (json.dumps(res, indent=1) + "\n").encode())  # each file whole or absent
    write_atomic(folder / f"{stem}.md", md.encode())
    with atomic_file(folder / f"{stem}.png") as tmp:
        draw(res, tmp)
    return md


@cli_main("python -m quantization.sensitivity")
def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    p = OneLineParser(prog="python -m quantization.sensitivity", description=__doc__)
    add_checkpoint_args(p, "official-layout checkpoint (default: seeded default model)")
    p.add_argument("--recipe", choices=["8da4w", "8da8w"], default="8da4w")
    p.add_argument("--group-size", type=int, default=32)
    p.add_argument("--seeds", type=seed_int, nargs="+", default=[1, 2])
    p.add_argument("--prompt", type=utf8_text, default="a lighthouse at dusk")
    p.add_argument("--cfg", type=finite_float, default=4.5)
    p.add_argument("--out", type=Path, required=True, help="output folder (sensitivity.json, .md, .png)")
    a = p.parse_args(argv)
    check_group_size(p, a.group_size)
    check_checkpoint_args(p, a)
    check_out_dir(p, "--out", a.out)
    hart = load_model(a.checkpoint, a.text_encoder)
    res = run(hart, a.recipe, a.group_size, a.prompt, a.seeds, a.cfg,
              progress=lambda it, d: tqdm(list(it), desc=d, file=sys.stderr))
    print(write_results(a.out, "sensitivity", res, markdown(res), chart))
    return 0


if __name__ == "__main__":
    sys.exit(main())
