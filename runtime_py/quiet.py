"""Third-party noise off a user's terminal, in one place (installed by runtime_py/__init__.py, so every
CLI has it before torch, torchao or ExecuTorch are imported).

Each filter drops one known message and nothing else; our own errors and any other warning still show:
- torchao logs `Failed to load .../_C_mxfp8...so` / `_C_cutlass_90a...so` at import: CUDA-only kernels
  that cannot load on a CPU-only torch (torchao/__init__.py, logger "torchao").
- torch logs a deprecation when torchao calls pytree register_constant() on an Enum (torch/utils/
  _pytree.py, logger "torch.utils._pytree").
- coremltools logs at import that its macOS-only runtime (libcoremlpython) is missing, that the
  installed scikit-learn is unsupported (its converters are unused here) and that torch 2.13 is newer
  than it was tested with (the pins in toolchain notes §1 are deliberate; tests/test_coreml.py covers it).
- ExecuTorch's emitter warns about buffer mutation on every export with a KV cache: expected here,
  the caches are mutable buffers shared by the scale methods on purpose.
- ExecuTorch's first XNNPACK method load probes ARM core types and logs five Info lines
  (`[cpuinfo_utils.cpp:N] ...`) from C++ straight to fd 2; ET_LOG's level is fixed at build time and
  has no runtime switch, so `cpu_probe_quiet` captures fd 2 around that one call and passes every
  other line through.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator

_LOG_NOISE = {
    "torchao": re.compile(r"Failed to load \S*/torchao/_C_\w+[\w.-]*\.so"),
    "torch.utils._pytree": re.compile(r".* is an Enum subclass and is now natively supported by torch\.compile"),
    "coremltools": re.compile(r"Failed to load _ML\w+Proxy: No module named 'coremltools\.libcoremlpython'"
                              r"|scikit-learn version \S+ is not supported\."
                              r"|Torch version \S+ has not been tested with coremltools\."),
}
_CPU_PROBE_LINE = re.compile(rb"\[cpuinfo_utils\.cpp:\d+\] ")
_probed = False


class _DropMatching(logging.Filter):
    def __init__(self, pattern: re.Pattern) -> None:
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(record.getMessage())


def install() -> None:
    """Add the filters (idempotent: a logger keeps one filter per message)."""
    for name, pattern in _LOG_NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMatching) for f in logger.filters):
            logger.addFilter(_DropMatching(pattern))
    warnings.filterwarnings("ignore", message=r"Mutation on a buffer in the model is detected", category=UserWarning)


@contextlib.contextmanager
def cpu_probe_quiet() -> Iterator[None]:
    """Around an ExecuTorch load_method: the first one in the process runs with fd 2 captured; its lines
    are written back afterwards except ExecuTorch's cpuinfo_utils probe lines. Later calls do nothing."""
    global _probed
    if _probed:
        yield
        return
    _probed = True
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all: nothing to keep clean
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [line for line in tmp.read().splitlines(keepends=True) if not _CPU_PROBE_LINE.match(line)]
            if kept:
                os.write(2, b"".join(kept))
