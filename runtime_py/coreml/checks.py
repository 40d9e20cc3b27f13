"""Linux-side checks of a Core ML bundle: package structure vs manifest, and stored weights vs torch.

Each check returns a `Check` (PASS / FAIL / SKIPPED with reasons), never raises on a bad bundle, so
the parity report can show every problem at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from runtime_py.coreml.conventions import CONST_NAME, WEIGHT_THRESHOLD, const_to_param, keep_fp32, param_index
from runtime_py.coreml.package import QUANT_OPS, dtype_name, expand_blocks, load_program, stored_weights

_ARRAY_DTYPES = {65568: "float32", 65552: "float16", 131104: "int32", 65600: "float64"}
# Serialized op names that differ from their pymil registry names.
_SPEC_ALIASES = {"write_state": "coreml_update_state"}
# linear_symmetric: codes in [-qmax, qmax], scale = absmax of the block of the fp16 weight / qmax.
QMAX = {"int4": 7, "int8": 127}
# Scales are stored in fp16 (relative rounding <= 2^-11 = 4.9e-4), so an entry may miss half a step by
# |code| x 2^-11. Measured on the default model: scales within 4.8e-4, entries within 0.502 (int4)
# and 0.531 (int8) steps; a scale or code changed in the package breaks both by far.
MAX_SCALE_REL_ERR = 6e-4


def max_step_err(storage: str) -> float:
    return 0.5 + QMAX[storage] * 2.0**-11 + 0.005


@dataclass
class Check:
    name: str
    status: str = "PASS"  # PASS | FAIL | SKIPPED
    errors: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    def fail(self, msg: str) -> None:
        self.status = "FAIL"
        self.errors.append(msg)

    @property
    def ok(self) -> bool:
        return self.status == "PASS"


def ios18_op_types() -> set[str]:
    """MIL core op types available at deployment target iOS18 (coremltools' registry)."""
    import coremltools as ct
    from coremltools.converters.mil.mil.ops.registry import SSAOpRegistry

    return {t for t, versions in SSAOpRegistry.core_ops.items() if versions and min(versions) <= ct.target.iOS18}


def _features(desc) -> list[tuple[str, list[int], str]]:
    return [(f.name, list(f.type.multiArrayType.shape), _ARRAY_DTYPES.get(f.type.multiArrayType.dataType, "?"))
            for f in desc]


def _states(desc) -> list[tuple[str, list[int], str]]:
    return [(s.name, list(s.type.stateType.arrayType.shape),
             _ARRAY_DTYPES.get(s.type.stateType.arrayType.dataType, "?")) for s in desc]


def _expect(entries: list[dict], name_key: str, dtype_key: str) -> list[tuple[str, list[int], str]]:
    return [(e[name_key], list(e["shape"]), e[dtype_key]) for e in entries]


def _compare(chk: Check, where: str, got: list, want: list) -> None:
    if got != want:
        for i in range(max(len(got), len(want))):
            g = got[i] if i < len(got) else None
            w = want[i] if i < len(want) else None
            if g != w:
                chk.fail(f"{where}[{i}]: package has {g}, manifest says {w}")


def check_structure(bundle: Path, manifest: dict) -> Check:
    """Functions, I/O names/shapes/dtypes (call order), states, opset, op set, fp32 islands, weight storage."""
    chk = Check("structure")
    cm = manifest["coreml"]
    allowed_ops = ios18_op_types()
    for model in manifest["components"].values():
        path = bundle / model["file"]
        if not path.is_dir():
            chk.fail(f"{model['file']}: missing")
            continue
        spec, prog = load_program(path)
        if spec.specificationVersion > cm["spec_version"]:
            chk.fail(f"{model['file']}: spec version {spec.specificationVersion} > {cm['spec_version']} "
                     f"({cm['deployment_target']})")
        _check_functions(chk, model, spec, manifest)
        for fname, f in spec.mlProgram.functions.items():
            for opset, block in f.block_specializations.items():
                if opset != cm["opset"]:
                    chk.fail(f"{model['file']}:{fname}: opset {opset}, expected {cm['opset']}")
                bad = {op.type for op in block.operations} - allowed_ops - set(_SPEC_ALIASES)
                if bad:
                    chk.fail(f"{model['file']}:{fname}: ops not in the {cm['deployment_target']} op set: {sorted(bad)}")
        _check_precision(chk, model["file"], prog)
        _check_storage(chk, model, path, prog)
    return chk


def _check_functions(chk: Check, model: dict, spec, manifest: dict) -> None:
    desc = spec.description
    methods = [m for m in manifest["methods"] if m["package"] == model["file"]]
    if len(model["functions"]) > 1 or desc.functions:
        funcs = {f.name: f for f in desc.functions}
        if set(funcs) != set(model["functions"]):
            chk.fail(f"{model['file']}: functions {sorted(funcs)}, manifest says {sorted(model['functions'])}")
        if desc.defaultFunctionName != model["default_function"]:
            chk.fail(f"{model['file']}: default function {desc.defaultFunctionName!r}, "
                     f"manifest says {model['default_function']!r}")
    else:
        funcs = {"main": desc}
    for m in methods:
        f = funcs.get(m["function"])
        if f is None:
            chk.fail(f"{model['file']}: no function {m['function']!r} for method {m['name']}")
            continue
        where = f"{model['file']}:{m['function']}"
        _compare(chk, f"{where} inputs", _features(f.input), _expect(m["coreml_inputs"], "coreml_name", "coreml_dtype"))
        _compare(chk, f"{where} outputs", _features(f.output),
                 _expect(m["coreml_outputs"], "coreml_name", "coreml_dtype"))
        _compare(chk, f"{where} states", _states(f.state), _expect(m["states"], "name", "dtype"))


def _check_precision(chk: Check, file: str, prog) -> None:
    """fp32 results only from casts, consts, and the documented fp32 islands (log/sin/cos cones)."""
    for fname, fn in prog.functions.items():
        memo: dict = {}
        for op in fn.operations:
            if op.op_type in ("const", "cast") or op.op_type in QUANT_OPS:
                continue
            if any(dtype_name(v) == "fp32" for v in op.outputs) and not keep_fp32(op, memo):
                chk.fail(f"{file}:{fname}: unexpected fp32 compute {op.op_type} {op.name}")


def _block_ok(w_shape: tuple[int, ...], recipe: dict) -> bool:
    """Whether coremltools can quantize this shape with the recipe (int4 blocks run along axis 1)."""
    return recipe["dtype"] != "int4" or (len(w_shape) > 1 and w_shape[1] % recipe["block_size"] == 0)


def _declared(recipe: dict, const_name: str) -> dict:
    """The recipe of one stored weight: the component's, or for auto its layer's (else the default)."""
    if recipe["dtype"] != "auto":
        return recipe
    layers = {f"hart.{n}.weight".replace(".", "_").lower(): d for n, d in recipe["layers"].items()}
    m = CONST_NAME.match(const_name)
    dtype = layers.get(m.group("base").lower(), recipe["default"]) if m else recipe["default"]
    return {"dtype": dtype, "block_size": recipe["block_size"]}


def _check_storage(chk: Check, model: dict, path: Path, prog) -> None:
    """Quantized components: every large parameter is a constexpr of the declared dtype and block layout
    (auto: the dtype of its layer in the per-layer plan)."""
    recipe = model["quantization"]
    for fname, fn in prog.functions.items():
        for op in fn.find_ops(op_type="constexpr_blockwise_shift_scale"):
            dt = dtype_name(op.data)
            want_dt = _declared(recipe, op.outputs[0].name)["dtype"]
            if dt != want_dt:
                chk.fail(f"{model['file']}:{fname}: {op.outputs[0].name} stored as {dt}, recipe is {want_dt}")
                continue
            blocks = [d // s for d, s in zip(op.data.val.shape, op.scale.val.shape)]
            want = [1, recipe.get("block_size")] if dt in ("int4", "uint4") else [1, op.data.val.shape[1]]
            if blocks[:2] != want:
                chk.fail(f"{model['file']}:{fname}: {op.outputs[0].name} block {blocks}, expected {want}")
    if recipe["dtype"] == "fp16":
        return
    stats = stored_weights(path, prog)
    skipped = []
    for w in stats.values():
        if w.storage.startswith(("int", "uint")) or w.numel <= WEIGHT_THRESHOLD:
            continue
        if w.name.startswith("p_"):  # torch.export names parameters p_<fqn>; others are derived consts
            declared = _declared(recipe, w.name)
            if declared["dtype"] != "fp16" and _block_ok(w.shape, declared):
                chk.fail(f"{model['file']}: parameter {w.name} {list(w.shape)} stored as {w.storage}, "
                         f"recipe is {declared['dtype']}")
            elif declared["dtype"] != "fp16":
                skipped.append(w.name)
    chk.info.setdefault("not_quantizable", {})[model["file"]] = skipped


def block_absmax(x: torch.Tensor, blocks: tuple[int, ...]) -> torch.Tensor:
    """max |x| over each block, for a tensor split into `blocks` (blocks per axis)."""
    shape = [d for n, b in zip(x.shape, blocks) for d in (b, n // b)]
    return x.abs().reshape(shape).amax(dim=tuple(range(1, 2 * len(blocks), 2)))


def _weight_errors(w, ref: torch.Tensor) -> tuple[list[str], dict[str, float]]:
    """How the stored weight differs from what quantizing / casting the fp32 parameter must give."""
    if not w.quantized:
        want = ref.half().float() if w.storage == "fp16" else ref
        bad = int((w.value != want).sum())
        return ([f"{bad} of {w.numel} values differ from the parameter cast to {w.storage}"] if bad else []), {}
    errs = []
    ref = ref.half().float()  # the converter quantizes the fp16 copy of the weight
    want_scale = block_absmax(ref, tuple(w.scale.shape)) / QMAX[w.storage]
    live = want_scale > 0
    scale_err = float(((w.scale - want_scale).abs()[live] / want_scale[live]).max()) if live.any() else 0.0
    if scale_err > MAX_SCALE_REL_ERR:
        errs.append(f"block scales off by up to {scale_err:.2%} (absmax/{QMAX[w.storage]} expected)")
    step = expand_blocks(w.scale, tuple(w.shape))
    steps = float(((w.value - ref).abs() / step.clamp_min(1e-30)).max())
    if steps > max_step_err(w.storage):
        errs.append(f"max error {steps:.2f} quantization steps (rounding gives <= 0.5)")
    return errs, {"max_steps": steps, "max_scale_rel_err": scale_err}


def check_weights(bundle: Path, manifest: dict, reference: torch.nn.Module) -> tuple[Check, dict[str, torch.Tensor]]:
    """Every stored parameter must be exactly what quantizing (or casting) the fp32 parameter gives.

    Quantized: block scales = absmax/qmax (fp16-rounded) and every entry within half a step of the fp32
    value; fp16: bit-equal to the fp32 value cast to fp16. Also: a parameter shared by several functions
    has one value. Returns (check, {fqn: stored value}) for the fp16 simulation.
    """
    chk = Check("weights")
    index = param_index(reference)
    params = dict(reference.named_parameters(prefix="hart"))
    loaded: dict[str, torch.Tensor] = {}
    rel: dict[str, float] = {}
    worst: dict[str, float] = {}
    unmapped = 0  # derived consts (folded products, transposes) and buffers: covered by sha256, not here
    for model in manifest["components"].values():
        for key, w in stored_weights(bundle / model["file"]).items():
            fqn = const_to_param(w.name, index)
            if fqn is None or fqn not in params:
                unmapped += w.numel
                continue
            ref = params[fqn].detach().float()
            if tuple(ref.shape) != tuple(w.shape):
                chk.fail(f"{model['file']}: {w.name} has shape {list(w.shape)}, {fqn} is {list(ref.shape)}")
                continue
            if fqn in loaded and not torch.equal(loaded[fqn], w.value):
                chk.fail(f"{fqn}: different values in different functions/packages ({key})")
            errs, stats = _weight_errors(w, ref)
            for e in errs:
                chk.fail(f"{model['file']}: {fqn} ({w.storage}): {e}")
            for k, v in stats.items():
                worst[f"{w.storage}_{k}"] = round(max(worst.get(f"{w.storage}_{k}", 0.0), v), 5)
            err = float((w.value - ref).norm() / ref.norm().clamp_min(1e-12))
            rel[w.storage] = max(rel.get(w.storage, 0.0), err)
            loaded[fqn] = w.value
    chk.info.update({"max_rel_err": {k: round(v, 5) for k, v in rel.items()}, **worst, "parameters": len(loaded),
                     "unmapped_weights": unmapped})
    if not loaded:
        chk.fail("no stored weight maps back to a model parameter")
    return chk, loaded
