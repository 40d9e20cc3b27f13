"""Peak-memory estimate of one generation, per memory mode (manifest field `peak_memory_estimate`).

Model: all weights resident + the KV cache + the largest transient of any stage (attention scores,
MLP hidden, conv maps). Runtimes allocate more (allocator slack, framework overhead); the host
benchmark reports the measured RSS next to this estimate.
"""

from __future__ import annotations

from model.config import HartConfig, scale_steps, total_tokens

KV_BYTES = {"fp32": 4.0, "fp16": 2.0, "int8": 1.0}


def kv_cache_bytes(cfg: HartConfig) -> float:
    ar = cfg.ar
    values = 2 * cfg.batch * ar.depth * 2 * total_tokens(ar) * ar.embed_dim  # rows × layers × (K, V) × L × C
    scales = 2 * cfg.batch * ar.depth * 2 * total_tokens(ar) * ar.num_heads * 4 if cfg.kv_cache == "int8" else 0
    return values * KV_BYTES[cfg.kv_cache] + scales


def largest_activation_bytes(cfg: HartConfig, act_bytes: float = 4.0) -> dict[str, float]:
    """Largest live transient per stage family (bytes)."""
    ar, rows = cfg.ar, 2 * cfg.batch
    attn, mlp = 0.0, 0.0
    for st in scale_steps(ar, cfg.sampler, cfg.vae.share_quant_resi):
        q = min(cfg.attn_chunk, st.num_query) if cfg.attn_chunk > 0 else st.num_query
        attn = max(attn, rows * ar.num_heads * q * st.kv_end * act_bytes * 2)  # scores + softmax
        mlp = max(mlp, rows * st.num_query * ar.mlp_hidden * act_bytes * 3)  # gate, up, product
    logits = rows * ar.patch_nums[-1] ** 2 * ar.vocab_size * act_bytes * 3  # logits, filtered, noise
    G = ar.patch_nums[-1]
    n = cfg.batch * G * G
    diffusion = 2 * n * ar.diff_width * act_bytes * 6
    side = cfg.image_size
    ch0 = cfg.vae.ch * cfg.vae.ch_mult[0]
    vae = cfg.batch * ch0 * side * side * act_bytes * 3  # input, conv output, GroupNorm temp at full res
    lowest = G * G
    vae = max(vae, cfg.batch * lowest * lowest * act_bytes)  # mid attention scores at the lowest resolution
    return {"ar_attention": attn, "ar_mlp": mlp, "ar_logits": logits, "diffusion_head": diffusion, "vae_decoder": vae}


def estimate_peak_bytes(cfg: HartConfig, weight_bytes: dict[str, float]) -> dict[str, float]:
    """{weights, kv_cache, activation, total}: every component resident (the apps keep them loaded)."""
    weights = float(sum(weight_bytes.values()))
    kv = kv_cache_bytes(cfg)
    act = max(largest_activation_bytes(cfg).values())
    return {"weights": weights, "kv_cache": kv, "activation": act, "total": weights + kv + act}


def memory_mode(cfg: HartConfig) -> dict:
    """The memory mode as recorded in a manifest (`memory.mode`)."""
    return {"kv_cache": cfg.kv_cache, "attn_chunk": cfg.attn_chunk,
            "full_precision": cfg.kv_cache == "fp32" and cfg.attn_chunk == 0}


def check_memory_mode(kv_cache: str, attn_chunk: int) -> None:
    if kv_cache not in KV_BYTES:
        raise ValueError(f"kv cache {kv_cache!r} is not one of {', '.join(KV_BYTES)}")
    if attn_chunk < 0:
        raise ValueError(f"attention chunk must be >= 0 (0 = off), got {attn_chunk}")


def with_memory_mode(hart, kv_cache: str | None = None, attn_chunk: int | None = None):
    """The same weights with another memory mode (KV cache dtype, query chunking); `hart` is unchanged.
    Caches are non-persistent buffers, so only the config and the cache allocation change."""
    from dataclasses import replace

    from model.build import with_config

    cfg = replace(hart.cfg, kv_cache=hart.cfg.kv_cache if kv_cache is None else kv_cache,
                  attn_chunk=hart.cfg.attn_chunk if attn_chunk is None else attn_chunk)
    check_memory_mode(cfg.kv_cache, cfg.attn_chunk)
    return with_config(hart, cfg, "memory mode")
