"""The trained default model's config and the training plan (steps, batches, learning rates).

Sized from measured step rates on the 2-core CPU (docs/training.md) so that the weights stay well under
25 MB. The plan was first sized for two hours; the VAE then needed ~1 h 50 min on its own to draw shape
colours and classes, so `--stage all` takes about 2.5 hours here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from model.config import SCHEDULES, ARConfig, HartConfig, VAEConfig, default_config

TRAIN_SEED = 20241014


def model_config() -> HartConfig:
    """256 px, the default 10-scale schedule; the default byte-level text encoder (frozen) with a
    128-token context (captions are ≤ ~110 bytes; 300 pad tokens would only cost attention)."""
    base = default_config()
    text = replace(base.text, max_tokens=128)
    ar = ARConfig(depth=3, embed_dim=128, num_heads=4, context_token=128, context_dim=text.hidden_size,
                  patch_nums=SCHEDULES["256px"], diff_width=128, diff_depth=2, vocab_size=512, cvae=16)
    vae = VAEConfig(vocab_size=512, z_channels=16, ch=32, ch_mult=(1, 1, 2, 2, 4), norm_groups=1)
    return HartConfig(name="trained", ar=ar, vae=vae, text=text)


@dataclass(frozen=True)
class StagePlan:
    steps: int
    batch: int
    lr: float
    warmup: int = 50


@dataclass(frozen=True)
class Plan:
    model: HartConfig = field(default_factory=model_config)
    # The VAE recipe the shipped weights converged with (docs/training.md: that run reached it in stages,
    # 1200 steps unweighted, then continued with the shape weight and a longer cosine schedule).
    vae: StagePlan = StagePlan(steps=3400, batch=4, lr=1e-3)
    vae_crop_frac: float = 0.3  # first 1020 VAE steps on half-size crops (~3× cheaper per image)
    vae_crop_batch_mult: int = 2  # crops per step = 2 × batch
    vae_continuous_frac: float = 0.15  # first 15% of VAE steps decode only the continuous latent (HART
    # started from VAR's trained tokenizer; from scratch the decoder first has to learn colours at all)
    vae_scenes: int = 0  # >0: the VAE cycles over this many scenes (tests); 0: the infinite stream
    vae_shape_weight: float = 10.0  # reconstruction weight of pixels off the background colour (1 + w); shapes
    # cover ~2-8% of a scene, so an unweighted loss learns backgrounds and leaves shape colours wrong
    pool: int = 3072  # scenes tokenized once by the trained VAE for the AR and diffusion stages
    ar: StagePlan = StagePlan(steps=1000, batch=16, lr=1e-3)
    diffusion: StagePlan = StagePlan(steps=300, batch=16, lr=1e-3)
    cfg_drop: float = 0.1  # context dropout (classifier-free guidance)
    train_text: bool = True  # the AR stage trains the byte-level text encoder too: frozen (seeded) features made
    # the AR learn the caption slowly (after 1000 steps the first-scale token, which sets the background, was
    # barely conditioned: CE 2.49 vs 3.07 unconditional and 1.38 given the background word); docs/training.md
    two_prob: float = 0.25  # share of two-shape scenes
    diffusion_repeat: int = 4  # noise draws per residual token (HART's diffusion_batch_mul)

    def stage(self, name: str) -> StagePlan:
        return getattr(self, name)


def tiny_plan() -> Plan:
    """Seconds-scale plan for tests: a narrow 32 px model (VAE downsample 8) on the (1, 2, 4) schedule."""
    base = default_config()
    text = replace(base.text, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16,
                   intermediate_size=64, max_tokens=128)
    ar = ARConfig(depth=1, embed_dim=32, num_heads=2, context_token=128, context_dim=32, patch_nums=(1, 2, 4),
                  diff_width=32, diff_depth=1, vocab_size=32, cvae=8)
    vae = VAEConfig(vocab_size=32, z_channels=8, ch=32, ch_mult=(1, 1, 1, 2))
    cfg = HartConfig(name="tiny", ar=ar, vae=vae, text=text)
    return Plan(model=cfg, vae=StagePlan(16, 4, 3e-3, 2), vae_crop_frac=0.0, vae_scenes=8, pool=8,
                ar=StagePlan(8, 4, 3e-3, 2), diffusion=StagePlan(8, 4, 3e-3, 2))
