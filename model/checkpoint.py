"""Official HART release layout: read (`load`) and write (`save`).

    ROOT/llm/config.json            hart_transformer_t2i config
    ROOT/llm/ema_model.bin          EMA state dict (torch.save) — what the official sampler uses
    ROOT/llm/model.safetensors      online weights (fallback)
    ROOT/tokenizer/config.json      hart_autoencoder_with_disc config
    ROOT/tokenizer/model.safetensors   vae.* (+ disc.*, ignored)
    ROOT/text_encoder/              Qwen2 folder (config.json, model*.safetensors, tokenizer.json)

Only safetensors or torch.load(weights_only=True); architecture variants come from the keys.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from model.config import ARConfig, HartConfig, SamplerConfig, VAEConfig
from model.errors import UserError
from model.hart import Hart
from model.text_encoder import load_text_encoder, save_text_encoder

TEXT_FOLDERS = ("text_encoder", "Qwen2-VL-1.5B-Instruct")
AR_IGNORE = ("attn_bias_for_masking", "lvl_1L")  # training-only / recomputed buffers (checked, not loaded)
VAE_IGNORE_PREFIXES = ("vae.quantize.ema_vocab_hit_SV", "disc.")
VAE_ENCODER_PREFIXES = ("vae.encoder.", "vae.quant_conv.")  # encode path: loaded only with with_encoder=True


class CheckpointError(UserError):
    """A checkpoint that does not match what the loader expects; the message names key and file."""

    def __init__(self, problem: str, fix: str = "check that the folder is an official HART release "
                 "(llm/, tokenizer/, text_encoder/) and re-download damaged files") -> None:
        super().__init__(problem, fix)


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Any failure while parsing a checkpoint file (safetensors, tokenizers, JSON, pickle refusals,
    truncation) becomes a CheckpointError naming the file: it is untrusted input."""
    try:
        yield
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - third-party parsers raise their own types
        raise CheckpointError(f"{path}: cannot be read ({type(e).__name__}: {e})") from e


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"missing {path}: expected the official HART layout (llm/, tokenizer/)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: invalid JSON ({e})") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """safetensors, or a torch.save'd state dict loaded with weights_only=True (never a full unpickle)."""
    if path.suffix == ".safetensors":
        with _reading(path), safe_open(str(path), "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - surface any unpickling refusal as a checkpoint error
        raise CheckpointError(f"{path}: not a loadable weights-only state dict ({e})") from e
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path}: expected a state dict, got {type(sd).__name__}")
    return sd


def _detect_ar(cfg_json: dict, sd: dict[str, torch.Tensor], path: Path, vae: VAEConfig) -> ARConfig:
    """ARConfig from config.json, with every variant detected from the keys (and cross-checked)."""
    def need(key: str) -> torch.Tensor:
        if key not in sd:
            raise CheckpointError(f"{path}: missing key {key!r}")
        return sd[key]

    if cfg_json.get("model_type") not in (None, "hart_transformer_t2i"):
        raise CheckpointError(
            f"{path.parent / 'config.json'}: model_type {cfg_json.get('model_type')!r} is not hart_transformer_t2i")
    gpt2_attn = "blocks.0.attn.mat_qkv.weight" in sd or "pos_start" in sd
    if gpt2_attn or cfg_json.get("attn_type", "llama") != "llama":
        raise CheckpointError(f"{path}: gpt2-attention HART variant (attn.mat_qkv / pos_start) is not supported")
    if cfg_json.get("sampler", "iddpm") != "iddpm":
        raise CheckpointError(
            f"{path.parent / 'config.json'}: sampler {cfg_json['sampler']!r} unsupported (iddpm only)")
    if cfg_json.get("use_cross_attn", False):
        raise CheckpointError(f"{path.parent / 'config.json'}: use_cross_attn=True is not supported")
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    if "blocks.0.ada_lin.1.weight" in sd:
        aln = "full"
    elif "blocks.0.scale_shift_table" in sd:
        aln = "shared"
    else:
        aln = "none"
    mlp_type = "llama" if "blocks.0.ffn.gate_proj.weight" in sd else "gpt2"
    word = need("word_embed.weight")
    ctx = need("context_embed.weight")
    head = need("head.weight")
    C, cvae = word.shape
    checks = {
        "disable_aln": (cfg_json.get("disable_aln"), aln != "full"),
        "shared_aln": (cfg_json.get("shared_aln"), aln == "shared"),
        "attn_l2_norm": (cfg_json.get("attn_l2_norm"), "blocks.0.attn.scale_mul_1H11" in sd),
        "use_context_norm": (cfg_json.get("use_context_norm"), "context_norm.weight" in sd),
        "use_timestep_embed": (cfg_json.get("use_timestep_embed"), "lvl_embed.mlp.0.weight" in sd),
        "mlp_type": (cfg_json.get("mlp_type"), mlp_type),
        "depth": (cfg_json.get("depth"), depth),
        "embed_dim": (cfg_json.get("embed_dim"), C),
        "context_dim": (cfg_json.get("context_dim"), ctx.shape[1]),
    }
    for name, (declared, found) in checks.items():
        if declared is not None and declared != found:
            raise CheckpointError(f"{path}: config.json says {name}={declared!r} but the weights say {found!r}")
    if head.shape[0] != vae.vocab_size or cvae != vae.z_channels:
        raise CheckpointError(
            f"{path}: head has {head.shape[0]} classes and word_embed {cvae} channels, but the VAE has "
            f"vocab {vae.vocab_size} and z_channels {vae.z_channels}")
    for key in ("num_heads", "patch_nums", "context_token"):
        if key not in cfg_json:
            raise CheckpointError(f"{path.parent / 'config.json'}: missing field {key!r} (not detectable from weights)")
    _check_ar_fields(cfg_json, C, path.parent / "config.json")
    diff_blocks = {k.split(".")[3] for k in sd if k.startswith("diffloss.net.res_blocks.")}
    return ARConfig(
        depth=depth, embed_dim=C, num_heads=int(cfg_json["num_heads"]),
        mlp_ratio=float(cfg_json.get("mlp_ratio", 4.0)), mlp_type=mlp_type,
        norm_eps=float(cfg_json.get("norm_eps", 1e-6)), context_token=int(cfg_json["context_token"]),
        context_dim=ctx.shape[1], patch_nums=tuple(int(p) for p in cfg_json["patch_nums"]), aln=aln,
        sep_aln_pooling_mode=cfg_json.get("sep_aln_pooling_mode", "max"),
        timestep_level_embed="lvl_embed.mlp.0.weight" in sd,
        attn_l2_norm="blocks.0.attn.scale_mul_1H11" in sd, use_context_norm="context_norm.weight" in sd,
        context_norm_scale=float(cfg_json.get("context_norm_scale", 1.0)),
        diff_width=need("diffloss.net.input_proj.weight").shape[0], diff_depth=len(diff_blocks),
        num_sampling_steps=int(cfg_json.get("num_sampling_steps", "8")),
        vocab_size=head.shape[0], cvae=cvae,
    )


def _check_ar_fields(cfg_json: dict, width: int, path: Path) -> None:
    """Types and ranges of the config.json fields the weights cannot tell (a wrong one loads but computes
    garbage, or divides by zero later)."""
    def is_int(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    heads = cfg_json["num_heads"]
    if not is_int(heads) or heads < 1 or width % heads or (width // heads) % 2:
        raise CheckpointError(f"{path}: num_heads={heads!r} does not split embed_dim {width} into even-sized heads")
    pn = cfg_json["patch_nums"]
    if not isinstance(pn, list) or not pn or not all(is_int(p) and p > 0 for p in pn) or pn != sorted(pn):
        raise CheckpointError(f"{path}: patch_nums={pn!r} is not an increasing list of positive integers")
    if not is_int(cfg_json["context_token"]) or cfg_json["context_token"] < 1:
        raise CheckpointError(f"{path}: context_token={cfg_json['context_token']!r} is not a positive integer")
    for key in ("mlp_ratio", "norm_eps", "context_norm_scale"):
        v = cfg_json.get(key, 1.0)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise CheckpointError(f"{path}: {key}={v!r} is not a positive number")


def _vae_config(cfg_json: dict, path: Path) -> VAEConfig:
    if cfg_json.get("model_type") not in (None, "hart_autoencoder_with_disc", "hart_autoencoder"):
        raise CheckpointError(f"{path}: model_type {cfg_json.get('model_type')!r} is not a HART autoencoder")
    if cfg_json.get("double_decoder", False):
        raise CheckpointError(f"{path}: double_decoder=True is not supported")
    if cfg_json.get("quantizer_type", "var_hybrid") != "var_hybrid":
        raise CheckpointError(f"{path}: quantizer_type {cfg_json['quantizer_type']!r} unsupported (var_hybrid only)")
    groups, ch = int(cfg_json.get("norm_groups", 32)), int(cfg_json.get("ch", 160))
    if groups < 1 or any(ch * m % groups for m in cfg_json.get("ch_mult", (1, 1, 2, 2, 4))):
        raise CheckpointError(f"{path}: norm_groups {groups} must be >= 1 and divide every ch * ch_mult")
    return VAEConfig(
        vocab_size=int(cfg_json.get("vocab_size", 4096)), z_channels=int(cfg_json.get("z_channels", 32)),
        ch=int(cfg_json.get("ch", 160)), ch_mult=tuple(cfg_json.get("ch_mult", (1, 1, 2, 2, 4))),
        quant_resi=float(cfg_json.get("quant_resi", 0.5)), share_quant_resi=int(cfg_json.get("share_quant_resi", 4)),
        norm_groups=int(cfg_json.get("norm_groups", 32)),
    )


def _strict_load(module: torch.nn.Module, sd: dict[str, torch.Tensor], path: Path, prefix: str = "") -> None:
    """load_state_dict(strict) with errors that name the key and the file."""
    own = {prefix + k: v for k, v in module.state_dict().items()}
    for k in sorted(set(sd) - set(own)):
        raise CheckpointError(f"{path}: unexpected key {k!r} (not part of this architecture)")
    for k in sorted(set(own) - set(sd)):
        raise CheckpointError(f"{path}: missing key {k!r}")
    for k, v in own.items():
        if tuple(sd[k].shape) != tuple(v.shape):
            raise CheckpointError(
                f"{path}: shape mismatch for {k!r}: file has {tuple(sd[k].shape)}, model expects {tuple(v.shape)}")
    _check_finite(sd, path)
    module.load_state_dict({k[len(prefix):]: t.float() for k, t in sd.items()}, strict=True)


def _check_finite(sd: dict[str, torch.Tensor], path: Path) -> None:
    """NaN/Inf weights load fine and then draw garbage silently: refuse them."""
    for k, t in sd.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise CheckpointError(f"{path}: tensor {k!r} contains NaN or Inf values")


def _level_map(ar: ARConfig) -> torch.Tensor:
    lv = [0] * ar.context_token + [i + 1 for i, pn in enumerate(ar.patch_nums[1:]) for _ in range(pn * pn)]
    return torch.tensor(lv, dtype=torch.int64)[None]


def find_text_folder(root: Path) -> Path | None:
    for name in TEXT_FOLDERS:
        if (root / name / "config.json").is_file():
            return root / name
    return None


def load(path: str | Path, text_encoder: str | Path | None = None, prefer_ema: bool = True,
         sampler: SamplerConfig | None = None, with_encoder: bool = False) -> Hart:
    """Load a checkpoint in the official layout into an eval-mode fp32 Hart.

    The text encoder comes from `text_encoder`, else ROOT/text_encoder or ROOT/Qwen2-VL-1.5B-Instruct;
    without one the model is built for context-in use only (`hart.text is None`).
    `hart.preview` is the per-scale preview projection of ROOT/preview.json when present (model/preview.py).
    The VAE encoder (`vae.encoder.*`, `vae.quant_conv.*`) is skipped unless with_encoder (T2I never uses it);
    with_encoder requires it to be in the file.
    """
    root = Path(path)
    if not root.is_dir():
        raise CheckpointError(f"checkpoint folder {root} does not exist")
    llm, tok = root / "llm", root / "tokenizer"
    with _reading(tok / "config.json"):
        vae_cfg = _vae_config(_read_json(tok / "config.json"), tok / "config.json")
    ar_json = _read_json(llm / "config.json")
    ema, online = llm / "ema_model.bin", llm / "model.safetensors"
    weights = ema if (prefer_ema and ema.is_file()) or not online.is_file() else online
    if not weights.is_file():
        raise CheckpointError(f"{llm}: no weights (expected ema_model.bin or model.safetensors)")
    ar_sd = _read_tensors(weights)
    with _reading(llm / "config.json"):
        ar_cfg = _detect_ar(ar_json, ar_sd, weights, vae_cfg)
    if "lvl_1L" in ar_sd and not torch.equal(ar_sd["lvl_1L"].reshape(1, -1), _level_map(ar_cfg)):
        raise CheckpointError(f"{weights}: buffer 'lvl_1L' does not match patch_nums {ar_cfg.patch_nums}")
    for k in [k for k in ar_sd if k.endswith("attn.zero_k_bias")]:
        if ar_sd[k].abs().max() != 0:
            raise CheckpointError(f"{weights}: {k!r} must be zero (the official K bias is fixed at 0)")
    ar_sd = {k: v for k, v in ar_sd.items() if k not in AR_IGNORE and not k.endswith("attn.zero_k_bias")}

    text_dir = Path(text_encoder) if text_encoder is not None else find_text_folder(root)
    text = None
    if text_dir is not None:
        with _reading(text_dir):
            text = load_text_encoder(text_dir)
        _check_finite(text.state_dict(), text_dir)
    text_cfg = text.cfg if text is not None else None
    if text_cfg is not None and text_cfg.hidden_size != ar_cfg.context_dim:
        raise CheckpointError(
            f"{text_dir}: text hidden size {text_cfg.hidden_size} != context_dim {ar_cfg.context_dim}")
    if text_cfg is not None and text_cfg.max_tokens != ar_cfg.context_token:
        raise CheckpointError(
            f"{text_dir}: text max_tokens {text_cfg.max_tokens} != context_token {ar_cfg.context_token}")
    cfg = HartConfig(name=root.name, ar=ar_cfg, vae=vae_cfg, text=text_cfg or _placeholder_text(ar_cfg),
                     sampler=sampler or SamplerConfig())
    hart = Hart(cfg, with_text=False)
    _strict_load(hart.ar, ar_sd, weights)

    vae_file = tok / "model.safetensors"
    if not vae_file.is_file():
        raise CheckpointError(f"{tok}: missing model.safetensors (VAE weights)")
    vae_sd = {k: v for k, v in _read_tensors(vae_file).items() if not k.startswith(VAE_IGNORE_PREFIXES)}
    if with_encoder:
        if not any(k.startswith(VAE_ENCODER_PREFIXES) for k in vae_sd):
            raise CheckpointError(f"{vae_file}: no VAE encoder (vae.encoder.*, vae.quant_conv.*) in this checkpoint")
        hart.vae.add_encoder()
    else:
        vae_sd = {k: v for k, v in vae_sd.items() if not k.startswith(VAE_ENCODER_PREFIXES)}
    _strict_load(hart.vae, vae_sd, vae_file, prefix="vae.")
    hart.text = text
    from model.preview import load_preview

    hart.preview = load_preview(root, channels=ar_cfg.cvae)  # CKPT/preview.json, if fitted (model/preview.py)
    return hart.eval().requires_grad_(False)


def _placeholder_text(ar: ARConfig):
    from model.text_encoder import TextConfig

    return TextConfig(hidden_size=ar.context_dim, max_tokens=ar.context_token)


def _llm_config_json(ar: ARConfig) -> dict:
    return {
        "architectures": ["HARTForT2I"], "model_type": "hart_transformer_t2i", "attn_type": "llama",
        "mlp_type": ar.mlp_type, "depth": ar.depth, "embed_dim": ar.embed_dim, "num_heads": ar.num_heads,
        "mlp_ratio": ar.mlp_ratio, "norm_eps": ar.norm_eps, "context_token": ar.context_token,
        "context_dim": ar.context_dim, "patch_nums": list(ar.patch_nums), "disable_aln": ar.aln != "full",
        "shared_aln": ar.aln == "shared", "sep_aln_pooling_mode": ar.sep_aln_pooling_mode,
        "use_timestep_embed": ar.timestep_level_embed, "attn_l2_norm": ar.attn_l2_norm,
        "use_context_norm": ar.use_context_norm, "context_norm_scale": ar.context_norm_scale,
        "diff_width": ar.diff_width, "diff_depth": ar.diff_depth,
        "num_sampling_steps": str(ar.num_sampling_steps), "sampler": "iddpm", "use_cross_attn": False,
        "vae_path": None, "torch_dtype": "float32",
    }


def _vae_config_json(vae: VAEConfig) -> dict:
    return {
        "architectures": ["HARTAutoEncoderWithDisc"], "model_type": "hart_autoencoder_with_disc",
        "vocab_size": vae.vocab_size, "z_channels": vae.z_channels, "ch": vae.ch, "ch_mult": list(vae.ch_mult),
        "quant_resi": vae.quant_resi, "share_quant_resi": vae.share_quant_resi, "quantizer_type": "var_hybrid",
        **({"norm_groups": vae.norm_groups} if vae.norm_groups != 32 else {}),  # not an official key
        "hybrid": True, "double_decoder": False, "using_znorm": False, "quant_conv_ks": 3, "torch_dtype": "float32",
    }


def save(hart: Hart, path: str | Path) -> Path:
    """Write `hart` in the official layout (EMA file = these weights; online file = the same weights).

    Buffers the official state dict carries (lvl_1L, zero K biases, the block-causal training mask)
    are written too, so the official loader's strict load_state_dict would accept ema_model.bin.
    """
    root = Path(path)
    (root / "llm").mkdir(parents=True, exist_ok=True)
    (root / "tokenizer").mkdir(parents=True, exist_ok=True)
    ar = hart.cfg.ar
    (root / "llm" / "config.json").write_text(json.dumps(_llm_config_json(ar), indent=2) + "\n")
    (root / "tokenizer" / "config.json").write_text(json.dumps(_vae_config_json(hart.cfg.vae), indent=2) + "\n")
    sd = {k: v.detach().contiguous().clone() for k, v in hart.ar.state_dict().items()}
    for i in range(ar.depth):
        sd[f"blocks.{i}.attn.zero_k_bias"] = torch.zeros(ar.embed_dim)
    save_file(sd, str(root / "llm" / "model.safetensors"), metadata={"format": "pt"})
    lvl = _level_map(ar)
    sd["lvl_1L"] = lvl
    sd["attn_bias_for_masking"] = torch.where(lvl[0][:, None] >= lvl[0][None], 0.0, float("-inf"))[None, None]
    torch.save(sd, root / "llm" / "ema_model.bin")
    vae_sd = {f"vae.{k}": v.detach().contiguous().clone() for k, v in hart.vae.state_dict().items()}
    save_file(vae_sd, str(root / "tokenizer" / "model.safetensors"), metadata={"format": "pt"})
    if hart.text is not None:
        save_text_encoder(hart.text, root / "text_encoder")
    if getattr(hart, "preview", None) is not None:
        from model.preview import save_preview

        save_preview(root, hart.preview, hart.G)
    return root
