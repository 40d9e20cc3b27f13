"""Shared training plumbing: model construction, data batches, resumable state (safetensors + JSON),
learning-rate schedule, loss curves. No pickle anywhere."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from data.world import render, scene_at
from model.config import HartConfig
from model.hart import Hart
from model.text_encoder import init_text_encoder


def new_model(cfg: HartConfig, seed: int) -> Hart:
    """Fresh trainable Hart (with VAE encoder): PyTorch default inits under one seed, DiT-style zero
    init of the modulation and output layers, codebook N(0, 0.5²); seeded byte-level text encoder (trained
    with the AR stage when Plan.train_text)."""
    torch.manual_seed(seed)
    hart = Hart(cfg, with_text=False)
    hart.vae.add_encoder()
    with torch.no_grad():
        hart.vae.quantize.embedding.weight.normal_(0, 0.5)
        net = hart.ar.diffloss.net
        for m in [*(b.adaLN_modulation[-1] for b in net.res_blocks), net.final_layer.adaLN_modulation[-1],
                  net.final_layer.linear, hart.ar.head_nm.ada_lin[-1]]:
            m.weight.zero_()
            m.bias.zero_()
    hart.text = init_text_encoder(cfg.text, seed + 2)
    return hart


def images(cfg: HartConfig, seed: int, split: str, start: int, n: int, two_prob: float):
    """Scenes start..start+n-1 as a float batch [n, 3, S, S] in [-1, 1] plus their captions."""
    scenes = [scene_at(seed, split, start + i, two_prob) for i in range(n)]
    arr = np.stack([render(s, cfg.image_size) for s in scenes])
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1
    return x, [s.caption for s in scenes]


def encode_captions(hart: Hart, captions: list[str], grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Text encoder: (context [B, T, D], mask [B, T]); `grad` when the stage trains the encoder too."""
    ids, masks = zip(*(hart.text.tokenizer.encode(c) for c in captions))
    ids_BT, mask_BT = torch.cat(ids), torch.cat(masks)
    with torch.set_grad_enabled(grad):
        return hart.text(ids_BT), mask_BT.float()


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up, cosine decay to 10% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def step_generator(seed: int, stage: str, step: int) -> torch.Generator:
    """Per-step RNG: resuming at step s draws exactly what an uninterrupted run draws."""
    key = f"{seed}/{stage}/{step}".encode()
    return torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(key).digest()[:7], "little"))


def save_state(out: Path, stage: str, hart: Hart, opt: torch.optim.Optimizer, step: int, losses: dict) -> None:
    """OUT/state/<stage>.safetensors (model + Adam moments) and <stage>.json (step, loss history)."""
    d = out / "state"
    d.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in hart.state_dict().items()}  # text.* too: the AR
    # stage may train the text encoder (Plan.train_text), and every later stage must start from that one
    names = {id(p): n for n, p in hart.named_parameters()}
    for group in opt.param_groups:
        for p in group["params"]:
            for k, v in opt.state.get(p, {}).items():
                if torch.is_tensor(v):
                    tensors[f"opt.{names[id(p)]}.{k}"] = v.detach().contiguous().reshape(v.shape or (1,))
    tmp = d / f"{stage}.safetensors.tmp"
    save_file(tensors, str(tmp))
    tmp.replace(d / f"{stage}.safetensors")
    (d / f"{stage}.json").write_text(json.dumps({"stage": stage, "step": step, "losses": losses}) + "\n")


def load_state(out: Path, stage: str, hart: Hart, opt: torch.optim.Optimizer | None) -> tuple[int, dict]:
    """Restore a stage's state; returns (next step, loss history)."""
    d = out / "state"
    meta = json.loads((d / f"{stage}.json").read_text())
    tensors = load_file(str(d / f"{stage}.safetensors"))
    load_model_tensors(hart, tensors)
    if opt is not None:
        params = dict(hart.named_parameters())
        for name, p in params.items():
            st = {k.rsplit(".", 1)[1]: v for k, v in tensors.items() if k.startswith(f"opt.{name}.")
                  and k.count(".") == name.count(".") + 2}
            if st:
                st["step"] = st["step"].reshape(())
                opt.state[p] = st
    return int(meta["step"]), meta["losses"]


def load_model_tensors(hart: Hart, tensors: dict[str, torch.Tensor]) -> None:
    sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    missing, unexpected = hart.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.startswith("text.")]
    if missing or unexpected:
        raise ValueError(f"state does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")


def plot_losses(path: Path, losses: dict[str, list[float]], title: str) -> None:
    """Loss curves (raw, light; 50-step running mean, bold) as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, vals in losses.items():
        v = np.asarray(vals, dtype=np.float64)
        if len(v) == 0:
            continue
        line, = ax.plot(v, alpha=0.25)
        k = min(50, len(v))
        ax.plot(np.arange(k - 1, len(v)), np.convolve(v, np.ones(k) / k, mode="valid"), color=line.get_color(),
                label=name)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
