"""ONNX graphs of the explicit-KV stage views (model/explicit_kv.py): torch.onnx dynamo export, metadata
stripped, constant fills folded back into ConstantOfShape."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from model.explicit_kv import graph_inputs
from model.stages import MethodSpec

OPSET = 20


def onnx_io_names(spec: MethodSpec) -> tuple[list[str], list[str]]:
    """ONNX value names must be unique in a graph: an output that reuses an input name gets `_out`."""
    ins = [t.name for t in spec.inputs]
    outs = [f"{t.name}_out" if t.name in ins else t.name for t in spec.outputs]
    return ins, outs


def strip_metadata(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop the exporter's per-node stack traces and FX dumps (half of a small graph's bytes)."""
    for n in model.graph.node:
        del n.metadata_props[:]
        n.doc_string = ""
    for v in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        del v.metadata_props[:]
    del model.metadata_props[:]
    model.graph.doc_string = ""
    return model


def unsplat(model: onnx.ModelProto, min_bytes: int = 1024) -> onnx.ModelProto:
    """Replace constant-folded fills (e.g. the -inf tensor of top-k filtering, up to [1, l, V] per scale)
    by ConstantOfShape nodes: the file keeps a shape and one value instead of megabytes of copies."""
    keep, nodes = [], []
    for t in model.graph.initializer:
        a = numpy_helper.to_array(t)
        if a.nbytes < min_bytes or a.size == 0 or not (a.flat[0] == a).all():
            keep.append(t)
            continue
        shape = numpy_helper.from_array(np.array(a.shape, dtype=np.int64), f"{t.name}__shape")
        keep.append(shape)
        value = numpy_helper.from_array(a.reshape(-1)[:1].copy(), "value")
        nodes.append(onnx.helper.make_node("ConstantOfShape", [shape.name], [t.name], name=f"{t.name}__fill",
                                           value=value))
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    for n in reversed(nodes):
        model.graph.node.insert(0, n)
    return model


def export_graph(module: nn.Module, spec: MethodSpec, seed: int = 0) -> onnx.ModelProto:
    """torch.onnx dynamo export of one method, weights embedded (the bundle writer moves them out)."""
    ins, outs = onnx_io_names(spec)
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)  # "no torchvision"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter deprecation chatter would break the progress bar
        prog = torch.onnx.export(module, graph_inputs(spec, seed), dynamo=True, optimize=True, verbose=False,
                                 opset_version=OPSET, input_names=ins, output_names=outs)
    model = unsplat(strip_metadata(prog.model_proto))
    got = [i.name for i in model.graph.input]
    if got != ins:  # an input the graph ignores is dropped by the exporter: the contract would break
        raise RuntimeError(f"{spec.name}: exported inputs {got} != contract {ins}")
    return model
