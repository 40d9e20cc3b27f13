"""ONNX precision recipes: int4 MatMulNBits / int8 dynamic for the transformers, fp16 for the rest.

Only MatMuls whose weight is a (transposed) `nn.Linear` weight of the component are quantized; the
codebook product of the Gumbel-soft mixture and the resampling matrices stay fp32, and int4 skips
weights with fewer than `block` input features (MatMulNBits would pad them to a whole block).
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from torch import nn

# Per-component precision of each `--quant` recipe.
RECIPES: dict[str, dict[str, str]] = {
    "int4": {"text_encoder": "int8", "ar_transformer": "int4", "diffusion_head": "fp16", "vae_decoder": "fp16"},
    "int8": {"text_encoder": "int8", "ar_transformer": "int8", "diffusion_head": "fp16", "vae_decoder": "fp16"},
    "fp32": {"text_encoder": "fp32", "ar_transformer": "fp32", "diffusion_head": "fp32", "vae_decoder": "fp32"},
}
INT4_BLOCK = 32


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a, dtype=np.float32).tobytes()).hexdigest()


def linear_weights(module: nn.Module, skip: tuple[str, ...] = (), prefix: str = "") -> dict[str, str]:
    """sha256 of every Linear weight as ONNX MatMul stores it (transposed, [in, out]) -> parameter name."""
    out = {}
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear) and not any(name.startswith(s) for s in skip):
            out[_digest(m.weight.detach().float().T.numpy())] = f"{prefix}{name}.weight"
    return out


def linear_matmuls(model: onnx.ModelProto, weights: dict[str, str], min_k: int = 1) -> dict[str, str]:
    """MatMul node name -> torch parameter name, for MatMuls whose constant B is one of `weights`."""
    inits = {t.name: t for t in model.graph.initializer}
    found = {}
    for n in model.graph.node:
        if n.op_type != "MatMul" or n.input[1] not in inits:
            continue
        b = numpy_helper.to_array(inits[n.input[1]])
        if b.ndim == 2 and b.dtype == np.float32 and b.shape[0] >= min_k and _digest(b) in weights:
            found[n.name] = weights[_digest(b)]
    return found


def quantize_int4(model: onnx.ModelProto, nodes: list[str]) -> onnx.ModelProto:
    """Weight-only int4, symmetric, block 32 (MatMulNBits, com.microsoft); activations int8 (level 4)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    others = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in set(nodes)]
    # nodes_to_exclude, not nodes_to_include: the quantizer ORs the include list with "every MatMul"
    q = MatMulNBitsQuantizer(model, block_size=INT4_BLOCK, is_symmetric=True, accuracy_level=4,
                             nodes_to_exclude=others)
    q.process()
    return q.model.model


def quantize_int8(model: onnx.ModelProto, nodes: list[str]) -> onnx.ModelProto:
    """Dynamic int8: weights per output channel in a 7-bit range (reduce_range), activations uint8 at run time.

    Why reduce_range: onnxruntime's x86 kernels without VNNI (AVX2) multiply u8 activations by s8
    weights with vpmaddubsw, which saturates a pair sum at 32767 for full-range weights; 7-bit
    weights (|w| <= 64: 2 * 255 * 64 < 32767) cannot saturate, so every CPU computes the same exact
    int32 sums. Measured on the default text encoder (worst of 3 prompts, docs/portability.md):
    full range 30.1 dB on AVX-512 VNNI / 16.3 dB on AVX2 (qemu -cpu Haswell); reduce_range 28.7 dB on both.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic warns "consider pre-processing" on the root logger
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "q.onnx"
        try:
            quantize_dynamic(model, out, weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                             op_types_to_quantize=["MatMul"], nodes_to_quantize=list(nodes))
        finally:
            root.setLevel(level)
        return onnx.load(out)


def quantize(model: onnx.ModelProto, precision: str, torch_module: nn.Module, skip: tuple[str, ...] = (),
             prefix: str = "") -> tuple[onnx.ModelProto, list[str]]:
    """Apply `precision` (int4 | int8; anything else is a no-op) to the Linear MatMuls of one graph.
    Returns the new model and the torch names (`prefix` + name in torch_module) of the quantized weights."""
    if precision not in ("int4", "int8"):
        return model, []
    nodes = linear_matmuls(model, linear_weights(torch_module, skip, prefix), INT4_BLOCK if precision == "int4" else 1)
    q = quantize_int4(model, list(nodes)) if precision == "int4" else quantize_int8(model, list(nodes))
    return q, sorted(set(nodes.values()))


def int4_weights(model: onnx.ModelProto) -> list[np.ndarray]:
    """Dequantized [N, K] weights (torch Linear layout) of every MatMulNBits node, in graph order:
    lets a test run eager PyTorch with exactly the weights the int4 graph uses."""
    inits = {t.name: t for t in model.graph.initializer}
    out = []
    for n in model.graph.node:
        if n.op_type != "MatMulNBits":
            continue
        a = {x.name: onnx.helper.get_attribute_value(x) for x in n.attribute}
        k, n_out, block = a["K"], a["N"], a["block_size"]
        packed = numpy_helper.to_array(inits[n.input[1]])  # [N, blocks, block/2] uint8, low nibble first
        scales = numpy_helper.to_array(inits[n.input[2]]).reshape(n_out, -1).astype(np.float32)
        zero = 8  # symmetric: no zero-point input, codes are offset by 8
        codes = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(n_out, packed.shape[1], block)
        w = (codes.astype(np.float32) - zero) * scales[:, :, None]
        out.append(w.reshape(n_out, -1)[:, :k])
    return out
