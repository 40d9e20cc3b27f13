"""The export contract: named stage methods with static input/output specs.

Every backend (eager, ExecuTorch, Core ML, ONNX) and every phone app runs the same list of
methods in the same order, passing tensors by name. Inputs not produced by an earlier method come
from the host: the tokenizer (`token_ids`, `context_mask`), the user (`cfg`) or the portable RNG
(`noise_u`, `noise`, with the streams given in the spec).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from model.hart import Hart

# RNG streams (docs/rng.md): per-scale choice / soft uniforms, diffusion initial + per-step normals.
STREAM_CHOICE, STREAM_SOFT, STREAM_DIFF_INIT, STREAM_DIFF_STEP = 0, 1000, 2000, 2001


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str  # "float32" | "int64" | "float16" | "int8" (int8 KV state of ONNX bundles)
    source: str = "env"  # env (earlier output) | tokenizer | user | rng
    rng: dict = field(default_factory=dict)  # {"dist": "uniform"|"normal", "streams": [...]} for source=rng

    def to_json(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        if not d["rng"]:
            del d["rng"]
        return d


@dataclass(frozen=True)
class MethodSpec:
    name: str
    component: str  # text_encoder | ar_transformer | diffusion_head | vae_decoder
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


def method_names(hart: Hart) -> list[str]:
    return ["text_encoder"] + [f"scale_{s.si:02d}" for s in hart.steps] + ["diffusion_head", "vae_decoder"]


BODY = "ar_body"  # the one transformer-body program method of the split AR layout


def body_call(si: int) -> str:
    """Manifest name of the body call of step si (every one runs the program method BODY)."""
    return f"{BODY}_{si:02d}"


def is_split(names: list[str]) -> bool:
    return "ar_prefill" in names


def _f32(name, shape, **kw) -> TensorSpec:
    return TensorSpec(name, tuple(shape), "float32", **kw)


def method_specs(hart: Hart) -> list[MethodSpec]:
    """Static specs of every method, in call order."""
    c = hart.cfg
    B, T, Dc, C, Cv, G = c.batch, c.ar.context_token, c.ar.context_dim, c.ar.embed_dim, c.ar.cvae, hart.G
    cfg_in = _f32("cfg", (1,), source="user")
    f_hat = _f32("f_hat", (B, Cv, G, G))
    cond = _f32("cond", (2 * B, 2, C))
    pos = _f32("pos_offset", (2 * B,))
    specs = [MethodSpec("text_encoder", "text_encoder",
                        (TensorSpec("token_ids", (B, T), "int64", source="tokenizer"),),
                        (_f32("context", (B, T, Dc)),))]
    last = hart.num_scales - 1
    for st in hart.steps:
        streams = [STREAM_CHOICE + st.si] + ([STREAM_SOFT + st.si] if hart.more_smooth else [])
        noise = _f32("noise_u", hart.noise_shape(st.si), source="rng", rng={"dist": "uniform", "streams": streams})
        idx = TensorSpec("idx", (B, st.num_sampled), "int64")
        if st.si == 0:
            ins = (_f32("context", (B, T, Dc)), _f32("context_mask", (B, T), source="tokenizer"), cfg_in, noise)
        elif st.si < last:
            ins = (_f32("x", (2 * B, st.num_query, C)), f_hat, cond, pos, cfg_in, noise)
        else:
            ins = (_f32("x", (2 * B, st.num_query, C)), cond, pos, cfg_in, noise)
        if st.si == last:
            outs = (idx, _f32("e_last", (B, G * G, Cv)), _f32("z", (2 * B * G * G, C)))
        else:
            x_next = _f32("x", (2 * B, st.next_pn ** 2, C))
            outs = (idx, f_hat, x_next) + ((cond, pos) if st.si == 0 else ())
        specs.append(MethodSpec(f"scale_{st.si:02d}", "ar_transformer", ins, outs))
    K, N = hart.diffusion_noise_shape()[:2]
    streams = [STREAM_DIFF_INIT] + [STREAM_DIFF_STEP + (K - 1 - j) for j in range(K - 1)]
    specs.append(MethodSpec("diffusion_head", "diffusion_head",
                            (_f32("z", (2 * N, C)), cfg_in,
                             _f32("noise", (K, N, Cv), source="rng", rng={"dist": "normal", "streams": streams})),
                            (_f32("delta", (N, Cv)),)))
    H = hart.cfg.image_size
    specs.append(MethodSpec("vae_decoder", "vae_decoder",
                            (f_hat, _f32("e_last", (B, G * G, Cv)), _f32("delta", (N, Cv))),
                            (_f32("image", (B, 3, H, H)),)))
    return specs


def split_method_specs(hart: Hart) -> list[MethodSpec]:
    """The split AR layout: `ar_prefill`, then per scale one body call (`ar_body_XX`, all the same program
    method with the query length as its only varying dim; the only method touching the KV cache) and the
    scale's glue (`scale_XX`: sampling, latent update, next RoPE tables and start position). The other
    components are unchanged. Every call still has static shapes, so the pipeline and the apps run it
    like any other method list."""
    base = method_specs(hart)
    c = hart.cfg
    B, T, C, G = c.batch, c.ar.context_token, c.ar.embed_dim, hart.G
    d = c.ar.head_dim
    cond, pos = _f32("cond", (2 * B, 2, C)), _f32("pos_offset", (2 * B,))
    start = TensorSpec("start_pos", (1,), "int64")

    def rope_io(n: int) -> tuple[TensorSpec, ...]:
        return _f32("x", (2 * B, n, C)), _f32("cos", (2 * B, n, d)), _f32("sin", (2 * B, n, d))

    old = {m.name: m for m in base}
    specs = [old["text_encoder"],
             MethodSpec("ar_prefill", "ar_transformer", old["scale_00"].inputs[:2], (*rope_io(T), cond, pos, start))]
    last = hart.num_scales - 1
    for st in hart.steps:
        n = T if st.si == 0 else st.num_query
        h = _f32("h", (2 * B, n, C))
        specs.append(MethodSpec(body_call(st.si), "ar_transformer", (*rope_io(n), cond, start), (h,)))
        scale = old[f"scale_{st.si:02d}"]
        cfg_in, noise = scale.inputs[-2:]
        idx = scale.outputs[0]
        if st.si == last:
            specs.append(MethodSpec(scale.name, "ar_transformer", (h, cond, cfg_in, noise), scale.outputs))
            continue
        f_hat = (_f32("f_hat", (B, c.ar.cvae, G, G)),)
        ins = (h, *(f_hat if st.si else ()), cond, pos, cfg_in, noise)
        specs.append(MethodSpec(scale.name, "ar_transformer", ins, (idx, *f_hat, *rope_io(st.next_pn ** 2), start)))
    return specs + [old["diffusion_head"], old["vae_decoder"]]


class Stage(nn.Module):
    """One method as an nn.Module (what torch.export sees). All stages share the submodule `hart`,
    so parameter and KV-buffer names are identical across methods (shared weights, shared state)."""

    def __init__(self, hart: Hart, name: str, split: bool = False):
        super().__init__()
        self.hart = hart
        self.method = name
        self.split = split  # scale_XX is the glue of the split layout (split_method_specs), not a whole step

    def forward(self, *args: torch.Tensor):
        h = self.hart
        if self.method == "text_encoder":
            return (h.encode_text(*args),)
        if self.method == "ar_prefill":
            return h.split_prefill(*args)
        if self.method == BODY:
            return (h.body(*args),)
        if self.method.startswith(BODY):
            return (h.body_static(int(self.method[len(BODY) + 1:]), *args),)
        if self.method.startswith("scale_") and self.split:
            si = int(self.method[6:])
            if si == h.num_scales - 1:
                hid, cond, cfg, u = args
                return tuple(h.glue(si, hid, cond, None, cfg, u))
            return tuple(h.glue(si, *args))
        if self.method.startswith("scale_"):
            return tuple(h.ar_step(int(self.method[6:]), *args))
        if self.method == "diffusion_head":
            return (h.diffuse(*args),)
        if self.method == "vae_decoder":
            return (h.decode(*args),)
        raise KeyError(self.method)


_DTYPES = {"float32": torch.float32, "int64": torch.int64, "float16": torch.float16, "int8": torch.int8}


def example_inputs(spec: MethodSpec, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Plausible inputs of the right shape/dtype (for tracing); ids are in range, uniforms in (0,1)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for t in spec.inputs:
        if t.dtype == "int64":
            out.append(torch.randint(0, 200, t.shape, generator=gen))
        elif t.name == "noise_u":
            out.append(torch.rand(t.shape, generator=gen).clamp(1e-6, 1 - 1e-6))
        elif t.name == "context_mask":
            out.append(torch.ones(t.shape))
        elif t.name == "cfg":
            out.append(torch.tensor([4.5]))
        else:
            out.append(torch.randn(t.shape, generator=gen))
    return tuple(out)


def torch_dtype(name: str) -> torch.dtype:
    return _DTYPES[name]
