"""Store the weights of many ONNX graphs once: one external-data file, content-addressed.

ONNX has no multi-method file, so the 10 AR step graphs would each carry the full AR weights. Here every
initializer of at least `min_bytes` is keyed by (dtype, dims, sha256 of its bytes), written once into one
data file, and every graph that uses it points at the same offset under the same name (`w/<first name>`,
a prefix no exporter emits, so it cannot clash with a graph's own values). The same name in every graph
is what lets a runtime also share the memory (ORT `SessionOptions.add_initializer`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from onnx import numpy_helper

ALIGN_SMALL, ALIGN_PAGE, PAGE_FROM = 64, 4096, 64 * 1024  # page-align big tensors so runtimes can mmap them


@dataclass
class SharedWeights:
    data_file: str
    data_bytes: int  # size of the shared data file
    referenced_bytes: int  # what the graphs reference in total (the cost without sharing)
    graph_bytes: dict[str, int] = field(default_factory=dict)  # graph proto size without weights
    external: dict[str, list[str]] = field(default_factory=dict)  # graph -> external initializer names
    num_tensors: int = 0


def _raw(t: onnx.TensorProto) -> bytes:
    if t.HasField("raw_data"):
        return t.raw_data
    return numpy_helper.to_array(t).tobytes()


def _key(t: onnx.TensorProto, raw: bytes) -> tuple:
    return (t.data_type, tuple(t.dims), hashlib.sha256(raw).hexdigest())


def _rename_inputs(graph: onnx.GraphProto, old: str, new: str) -> None:
    for n in graph.node:
        for i, name in enumerate(n.input):
            if name == old:
                n.input[i] = new
        for a in n.attribute:  # If/Loop bodies see outer-scope names
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                _rename_inputs(g, old, new)


def share_external(models: dict[str, onnx.ModelProto], out_dir: Path, data_file: str = "weights.data",
                   min_bytes: int = 1024) -> SharedWeights:
    """Rewrite `models` in place to reference one deduplicated `data_file` in out_dir, then save each as
    out_dir/<name>.onnx. Returns the sizes (with and without sharing) and each graph's external names."""
    names: dict[tuple, str] = {}  # content key -> canonical initializer name
    taken: set[str] = set()
    offsets: dict[tuple, tuple[int, int]] = {}
    report = SharedWeights(data_file, 0, 0)
    with open(out_dir / data_file, "wb") as f:
        for gname, model in models.items():
            keep, ext = [], []
            seen_here: set[str] = set()
            for t in model.graph.initializer:
                raw = _raw(t)
                if len(raw) < min_bytes:
                    keep.append(t)
                    continue
                key = _key(t, raw)
                if key not in names:
                    name = f"w/{t.name}" if f"w/{t.name}" not in taken else f"w/{t.name}__{key[2][:8]}"
                    names[key] = name
                    taken.add(name)
                    align = ALIGN_PAGE if len(raw) >= PAGE_FROM else ALIGN_SMALL
                    f.write(b"\0" * (-f.tell() % align))
                    offsets[key] = (f.tell(), len(raw))
                    f.write(raw)
                canon = names[key]
                if t.name != canon:
                    _rename_inputs(model.graph, t.name, canon)
                report.referenced_bytes += len(raw)
                if canon in seen_here:  # identical tensor twice in one graph: keep one
                    continue
                seen_here.add(canon)
                off, length = offsets[key]
                new = onnx.TensorProto(name=canon, data_type=t.data_type, dims=t.dims)
                new.data_location = onnx.TensorProto.EXTERNAL
                for k, v in (("location", data_file), ("offset", str(off)), ("length", str(length))):
                    new.external_data.add(key=k, value=v)
                ext.append(new)
            del model.graph.initializer[:]
            model.graph.initializer.extend(keep + ext)
            report.external[gname] = [t.name for t in ext]
            report.graph_bytes[gname] = model.ByteSize()
            (out_dir / f"{gname}.onnx").write_bytes(model.SerializeToString())
        report.data_bytes = f.tell()
    report.num_tensors = len(names)
    return report


def embedded_size(model: onnx.ModelProto) -> int:
    """Bytes of the graph saved self-contained (weights inline): the per-graph cost without sharing."""
    return model.ByteSize()
