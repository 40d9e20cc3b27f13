"""torch.export -> ExecuTorch (XNNPACK) lowering helpers shared by every ExecuTorch program we write.

Workarounds for ExecuTorch 1.5.1, each explained where it is defined:
- `prepare`: folds constant subgraphs (the attention's qkv bias is built in-graph by torch.cat, and
  XNNPACK only takes a dynamically quantized linear whose bias is static) and drops unused state.
- `drop_unused_state`: every stage module holds the whole `Hart`, so torch.export lifts every
  buffer (KV caches, text-encoder prefix K/V, resampling matrices) into every program; ExecuTorch's
  own `remove_unused_parameters_pass` only drops parameters, so unused buffers were serialized into
  each .pte (the diffusion head carried 1.4 MB of zero KV cache).
- `ConnectedXnnpackPartitioner`: see its docstring.
- `tensors_shared_in_preprocess`: see its docstring (memory of multi-method programs).
"""

from __future__ import annotations

import contextlib
import copy
import itertools

import torch
from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
from executorch.exir.operator.util import _QUANT_PRIMITIVES
from executorch.exir.passes import MemoryPlanningPass
from executorch.exir.passes.constant_prop_pass import constant_prop_pass
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind
from torch.fx.passes.infra.partitioner import Partition

_STATE_KINDS = (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR)


def prepare(ep: ExportedProgram) -> ExportedProgram:
    """Functionalize, fold constants, drop unused state: the program handed to `lower`.

    Folding must run on the functional graph: before `run_decompositions` the KV-cache writes are
    in-place `copy_`s and the caches look like constant buffers. Quantization primitives and
    `full` are never folded (ExecuTorch's own default), so int4/int8 weights stay quantized.
    Folded tensors can be views of each other, which re-tracing rejects, hence the clones.
    """
    ep = ep.run_decompositions({})
    ep = constant_prop_pass(ep, custom_skip_targets={torch.ops.aten.full.default, *_QUANT_PRIMITIVES})
    for table in (ep._state_dict, ep._constants):
        for k in [k for k in table if k.startswith("_prop_tensor_constant")]:
            table[k] = table[k].detach().clone().contiguous()
    return drop_unused_state(ep)[0]


def drop_unused_state(ep: ExportedProgram) -> tuple[ExportedProgram, list[str]]:
    """Remove lifted parameters/buffers/constants that no node reads (mutated buffers are kept)."""
    sig = ep.graph_signature
    mutated = set(sig.buffers_to_mutate.values())
    nodes = {n.name: n for n in ep.graph_module.graph.nodes if n.op == "placeholder"}
    unused = [s for s in sig.input_specs
              if s.kind in _STATE_KINDS and s.target not in mutated and not nodes[s.arg.name].users]
    new_sig = copy.deepcopy(sig)
    for s in unused:
        new_sig.input_specs.remove(s)
        (ep._constants if s.kind == InputKind.CONSTANT_TENSOR else ep._state_dict).pop(s.target, None)
        ep.graph_module.graph.erase_node(nodes[s.arg.name])
    ep._graph_signature = new_sig
    ep.graph_module.recompile()
    return ep, [s.target for s in unused]


def connected_components(nodes: set[torch.fx.Node]) -> list[list[torch.fx.Node]]:
    """Weakly connected components of the subgraph induced by `nodes` (edges inside the set only)."""
    seen: set[torch.fx.Node] = set()
    comps = []
    for start in nodes:
        if start in seen:
            continue
        comp, stack = [], [start]
        seen.add(start)
        while stack:
            n = stack.pop()
            comp.append(n)
            for m in itertools.chain(n.all_input_nodes, n.users):
                if m in nodes and m not in seen:
                    seen.add(m)
                    stack.append(m)
        comps.append(comp)
    return comps


class ConnectedXnnpackPartitioner(XnnpackPartitioner):
    """XnnpackPartitioner whose partitions are connected subgraphs.

    ExecuTorch 1.5.1's GroupBasedPartitioner also merges partitions that share no edge. Each merged
    partition is convex on its own, but fusing one makes all its outputs depend on all its inputs,
    so two partitions can end up depending on each other: lowering the last AR scale (argmax ->
    codebook gather -> word_embed feeding `z`, beside the Gumbel-soft `y @ codebook`) fails with
    "Invalid partition, found dependency cycles". Splitting each partition into weakly connected
    components removes those false dependencies; dynamic-quant groups and weight placeholders are
    connected to their consumer, so they stay together.
    """

    def generate_partitions(self, ep) -> list[Partition]:
        ids = itertools.count()
        return [Partition(id=next(ids), nodes=comp)
                for part in super().generate_partitions(ep) for comp in connected_components(set(part.nodes))]


@contextlib.contextmanager
def tensors_shared_in_preprocess():
    """While lowering, XNNPACK preprocesses a copy of each partition that shares its weight tensors.

    ExecuTorch 1.5.1 (`backend_api.lower_all_submodules_to_backend`) deep-copies every delegated
    partition's ExportedProgram, weights included, for all methods of a program at once, before
    preprocessing any of them. The AR program has one method per scale and every method reads every
    weight, so that is one extra copy of the weights per method: for the 0.7B transformer at 512 px
    (10 methods) RSS grew from 12.6 GB to 18.9 GB within a minute and was still climbing (stopped
    with 3.5 GB of RAM left). XNNPACK's preprocess never writes into a source tensor (its passes
    replace state-dict entries), so the copy keeps an independent graph and state-dict mapping and
    shares the tensors: what ExecuTorch's own CUDA backend does in its low-memory mode.
    """
    from executorch.backends.xnnpack.xnnpack_preprocess import XnnpackBackend

    name = "copy_exported_program_for_preprocess"
    own = XnnpackBackend.__dict__.get(name)

    def copy_sharing_tensors(cls, edge_program: ExportedProgram, compile_specs) -> ExportedProgram:
        memo = {id(t): t for table in (edge_program.state_dict, edge_program.constants) for t in table.values()
                if isinstance(t, torch.Tensor)}
        return copy.deepcopy(edge_program, memo)

    setattr(XnnpackBackend, name, classmethod(copy_sharing_tensors))
    try:
        yield
    finally:
        if own is None:
            delattr(XnnpackBackend, name)
        else:
            setattr(XnnpackBackend, name, own)


def lower(programs: dict[str, ExportedProgram], shared_state: bool, check_ir: bool = False):
    """Lower methods into one ExecuTorch program (weights stored once; with `shared_state`, one
    mutable KV allocation that every method reads and writes). Mutable buffers keep their names in
    the program either way, so the manifest can list the state a program holds.

    `check_ir=False` skips the edge-dialect dtype verifier, which ExecuTorch re-runs after every
    constant duplication (~1/3 of lowering time for the 8-step diffusion head); the parity gate
    checks the result numerically instead.
    """
    with tensors_shared_in_preprocess():
        edge = to_edge_transform_and_lower(programs, partitioner=[ConnectedXnnpackPartitioner()],
                                           compile_config=EdgeCompileConfig(_check_ir_validity=check_ir))
    planning = MemoryPlanningPass(share_mutable_buffers=shared_state)
    return edge.to_executorch(ExecutorchBackendConfig(memory_planning_pass=planning,
                                                      emit_mutable_buffer_names=True))
