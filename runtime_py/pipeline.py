"""Backend-neutral pipeline: call methods in order, pass tensors by name, draw portable noise.

This loop is the one the Android and iOS apps implement: nothing here is Python-specific beyond
the tokenizer call and the RNG, both specified in docs/.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from model import rng
from model.stages import MethodSpec, TensorSpec, torch_dtype


class Backend(Protocol):
    name: str

    def run(self, method: str, inputs: list[torch.Tensor]) -> list[torch.Tensor]: ...

    # optional: def release(self, method: str, finished: bool = False) -> None: free what `method` holds;
    # run() loads it again. finished: the image is past the method's last use (state may go too)


@dataclass
class Generation:
    image: torch.Tensor  # [B, 3, H, W] float in [0, 1]
    tokens: dict[str, torch.Tensor]  # method -> sampled ids
    timings_ms: dict[str, float]
    trace: dict[str, dict[str, list[torch.Tensor]]] = field(default_factory=dict)  # method -> {"in","out"}


def draw_noise(spec: TensorSpec, seed: int) -> torch.Tensor:
    """One rng input: the leading dim enumerates streams (one stream per slice)."""
    dist, streams = spec.rng["dist"], spec.rng["streams"]
    per = spec.shape[1:]
    draw = rng.uniform_t if dist == "uniform" else rng.normal_t
    if len(streams) != spec.shape[0]:
        raise ValueError(f"{spec.name}: {len(streams)} streams for leading dim {spec.shape[0]}")
    return torch.stack([draw(seed, s, per) for s in streams])


class Pipeline:
    """`unload_text_encoder`: release the text encoder's program right after it ran (it runs once per
    image, before the AR steps), so its weights do not count toward the AR/diffusion/VAE peak; the
    backend loads it again at the next image. Outputs are unchanged (the text encoder has no state).

    `release_after_use`: the same for every component, each released after its last method of the image
    (the AR programs with their KV cache after the last scale: every cache slot a scale reads is written
    earlier in the same image, so a reload starts the next image correctly). With a backend that loads
    lazily (open_pipeline(..., release_after_use=True)) one component is resident at a time, and the
    peak is the largest phase (manifest `memory.peak_bytes_release_after_use`) instead of their sum."""

    def __init__(self, specs: list[MethodSpec], backend: Backend, tokenizer, progress=None,
                 unload_text_encoder: bool = False, release_after_use: bool = False):
        self.specs = specs
        self.backend = backend
        self.tokenizer = tokenizer
        self.progress = progress  # optional callable(iterable, desc) -> iterable (tqdm)
        self.unload_text_encoder = unload_text_encoder
        self.release_after_use = release_after_use
        self.last_use = {m.component: i for i, m in enumerate(specs)}  # component -> index of its last method

    def _release(self, i: int, m: MethodSpec, timings: dict) -> None:
        """After method i: release its component if this was the component's last method of the image."""
        if not hasattr(self.backend, "release") or self.last_use[m.component] != i:
            return
        if not (self.release_after_use or (self.unload_text_encoder and m.component == "text_encoder")):
            return
        t0 = time.perf_counter()
        for other in self.specs:
            if other.component == m.component:
                self.backend.release(other.name, finished=True)
        timings[f"release_{m.component}"] = (time.perf_counter() - t0) * 1e3

    def host_input(self, spec: TensorSpec, env: dict, seed: int, cfg: float) -> torch.Tensor:
        if spec.source == "env":
            if spec.name not in env:
                raise KeyError(f"input {spec.name!r} is not produced by any earlier method")
            return env[spec.name]
        if spec.source == "user":
            return torch.tensor([cfg], dtype=torch_dtype(spec.dtype))
        if spec.source == "rng":
            return draw_noise(spec, seed).to(torch_dtype(spec.dtype))
        if spec.source == "zeros":  # state a stateless backend carries explicitly (ONNX KV cache), fresh per call
            return torch.zeros(spec.shape, dtype=torch_dtype(spec.dtype))
        return env[spec.name].to(torch_dtype(spec.dtype))  # tokenizer outputs placed in env up front

    def generate(self, prompt: str, seed: int, cfg: float, keep_trace: bool = False,
                 on_latent: Callable[[str, torch.Tensor], None] | None = None) -> Generation:
        """`on_latent(method, latent)`: after every scale method, the latent a per-scale preview shows
        (model/preview.py scale_latent: f_hat, at the last scale f_hat + e_last), [B, C, G, G] float32."""
        if seed < 0:
            raise ValueError("seed must be >= 0")
        t0 = time.perf_counter()
        ids, mask = self.tokenizer.encode(prompt)
        env: dict[str, torch.Tensor] = {"token_ids": ids, "context_mask": mask.float()}
        timings = {"tokenize": (time.perf_counter() - t0) * 1e3}
        tokens, trace = {}, {}
        it = self.progress(self.specs, "stages") if self.progress else self.specs
        for i, m in enumerate(it):
            inputs = [self.host_input(s, env, seed, cfg) for s in m.inputs]
            for s, t in zip(m.inputs, inputs):
                if tuple(t.shape) != s.shape:
                    raise ValueError(f"{m.name}: input {s.name} has shape {tuple(t.shape)}, expected {s.shape}")
            t0 = time.perf_counter()
            outs = self.backend.run(m.name, inputs)
            timings[m.name] = (time.perf_counter() - t0) * 1e3
            if len(outs) != len(m.outputs):
                raise ValueError(f"{m.name}: backend returned {len(outs)} outputs, spec has {len(m.outputs)}")
            if on_latent is not None and m.name.startswith("scale_"):
                from model.preview import scale_latent

                lat = scale_latent({s.name: t for s, t in zip(m.outputs, outs)}, env)
                if lat is not None:
                    on_latent(m.name, lat)
            for s, t in zip(m.outputs, outs):
                env[s.name] = t
            if "idx" in env and m.name.startswith("scale_"):
                tokens[m.name] = env.pop("idx")
            self._release(i, m, timings)
            if keep_trace:
                trace[m.name] = {"in": [t.clone() for t in inputs], "out": [t.clone() for t in outs]}
        return Generation(image=env["image"], tokens=tokens, timings_ms=timings, trace=trace)


class EagerBackend:
    """The oracle: the PyTorch model's stage functions, called exactly like exported methods."""

    name = "eager"

    def __init__(self, hart, split: bool = False):
        self.hart = hart
        self.split = split  # the split AR layout (model.stages.split_method_specs): scale_XX are glue methods
        self.stages = {}

    @torch.no_grad()
    def run(self, method: str, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        from model.stages import Stage

        if method not in self.stages:
            self.stages[method] = Stage(self.hart, method, self.split)
        return list(self.stages[method](*inputs))
