"""Shared CLI behaviour: every failure a user can fix is ONE line on stderr and a non-zero exit code.

Exit codes: 2 bad arguments or inputs (argparse errors, UserError), 1 a check that ran and failed
(and unexpected errors), 130 interrupted (Ctrl-C). `cli_main` wraps each CLI's `main` so a UserError
raised anywhere below (model/, runtime_py/, export/) is printed once, without a traceback; outputs are
written atomically, so a failure leaves nothing behind. HART_DEBUG=1 re-raises for the traceback.
The argument types below validate values before any heavy import (torch, executorch) happens.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from model.errors import BAD_INPUT, FAILED_CHECK, UserError
from model.rng import SEED_LIMIT

__all__ = ["BAD_INPUT", "FAILED_CHECK", "OneLineParser", "UserError", "cli_main", "finite_float", "seed_int",
           "utf8_text", "check_out_file", "check_out_dir"]



class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):  # noqa: D102 - argparse hook
        print(f"{self.prog}: error: {' '.join(message.split())} (see --help)", file=sys.stderr)
        raise SystemExit(BAD_INPUT)


_in_main = False  # set while a cli_main-wrapped main runs: Ctrl-C then unwinds (cleanup) instead of exiting


def install_sigint() -> None:
    """For `python -m <cli>` (runtime_py/__init__.py calls it when argv[0] is "-m"): Ctrl-C before main
    runs (while torch imports, say) exits 130 with one line instead of a KeyboardInterrupt traceback;
    nothing has been written yet. Inside main it raises KeyboardInterrupt as usual, for cleanup."""
    def on_sigint(signum, frame) -> None:
        if _in_main:
            raise KeyboardInterrupt
        os.write(2, b"error: interrupted before anything was written\n")
        os._exit(130)

    signal.signal(signal.SIGINT, on_sigint)


def _say(prog: str, message: str) -> None:
    print(f"{prog}: error: {' '.join(message.split())}", file=sys.stderr)


def cli_main(prog: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Decorate `main(argv) -> int`: UserError -> its one line and code; Ctrl-C -> 130; an OS error
    (disk full, file size limit, permissions) -> one line, 1; anything else -> one line naming it, 1."""
    def wrap(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> int:
            global _in_main
            _in_main = True
            try:
                return main(argv)
            except UserError as e:
                _say(prog, str(e))
                return e.code
            except KeyboardInterrupt:
                _say(prog, "interrupted; nothing was written (outputs are only put in place when complete)")
                return 130
            except Exception as e:
                if os.environ.get("HART_DEBUG"):
                    raise
                if isinstance(e, OSError):
                    _say(prog, f"{e}; check free space, file size limits (ulimit -f) and permissions")
                else:
                    _say(prog, f"unexpected {type(e).__name__}: {e}; this is a bug, please report it "
                               "(HART_DEBUG=1 shows the traceback)")
                return FAILED_CHECK
            finally:
                _in_main = False
        return run
    return wrap


# ---- argument types (argparse turns their ValueError/ArgumentTypeError into a one-line exit 2) ----------

def _checked(s: str, convert: Callable, kind: str, ok: Callable, why: str):
    """convert(s) or a one-line argparse error: `s is not <kind>` / `s <why>` when not ok(value)."""
    try:
        v = convert(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not {kind}") from None
    if not ok(v):
        raise argparse.ArgumentTypeError(f"{s!r} {why}")
    return v


def finite_float(s: str) -> float:
    return _checked(s, float, "a number", math.isfinite, "is not a finite number")


def seed_int(s: str) -> int:
    return _checked(s, int, "an integer seed", lambda v: 0 <= v < SEED_LIMIT,
                    "is outside [0, 2^63 - 1] (the portable RNG's seed range)")


def utf8_text(s: str) -> str:
    """Text from argv: undecodable bytes arrive as lone surrogates (PEP 383) and would fail later."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError("is not valid UTF-8 text (check the terminal's encoding)") from None
    return s


def check_out_file(p: argparse.ArgumentParser, flag: str, path: Path) -> None:
    """An output FILE path: not a folder, and its folder exists or can be created and is writable."""
    if path.is_dir():
        p.error(f"{flag} {path} is a folder; give a file path")
    _check_writable_parent(p, flag, path)


def check_out_dir(p: argparse.ArgumentParser, flag: str, path: Path) -> None:
    """An output FOLDER path: not an existing file, and where it goes is writable."""
    if path.exists() and not path.is_dir():
        p.error(f"{flag} {path} is an existing file; give a folder path")
    _check_writable_parent(p, flag, path)


def _check_writable_parent(p: argparse.ArgumentParser, flag: str, path: Path) -> None:
    """Probe with a real temp file in the first existing folder (os.access says yes to root on /proc)."""
    parent = path.absolute() if path.is_dir() else path.absolute().parent
    while not parent.exists():  # missing folders are created: the first existing ancestor decides
        parent = parent.parent
    if not parent.is_dir():
        p.error(f"{flag} {path}: {parent} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        p.error(f"{flag} {path}: cannot write in {parent} ({e.strerror}); choose another path")


# ---- --checkpoint / --text-encoder (every CLI that loads an official-layout checkpoint) ------------------

def add_checkpoint_args(p: argparse.ArgumentParser, help: str, group=None) -> None:
    """--checkpoint DIR (in `group` if given, e.g. a mutually exclusive one) and --text-encoder DIR,
    the official sample.py's --text_model_path: Qwen2 often lives in its own folder."""
    (group or p).add_argument("--checkpoint", type=Path, help=help)
    p.add_argument("--text-encoder", type=Path,
                   help="Qwen2 text-encoder folder for --checkpoint (default: CHECKPOINT/text_encoder or "
                        "CHECKPOINT/Qwen2-VL-1.5B-Instruct)")


def check_checkpoint_args(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    if a.checkpoint is not None and not a.checkpoint.is_dir():
        p.error(f"--checkpoint {a.checkpoint} is not a folder (expected llm/ and tokenizer/ inside)")
    if a.text_encoder is not None and a.checkpoint is None:
        p.error("--text-encoder goes with --checkpoint (the default model and bundles carry their own)")
    if a.text_encoder is not None and not a.text_encoder.is_dir():
        p.error(f"--text-encoder {a.text_encoder} is not a folder (expected a Qwen2 folder with config.json)")


def load_model(checkpoint: Path | None, text_encoder: Path | None = None):
    """The seeded default model, or the checkpoint with its text encoder (UserError, exit 2, without one:
    text-to-image needs it)."""
    from model import load
    from model.build import default_model

    if checkpoint is None:
        return default_model()
    hart = load(checkpoint, text_encoder=text_encoder)
    if hart.text is None:
        raise UserError(f"--checkpoint {checkpoint} has no text encoder folder (text_encoder/ or "
                        "Qwen2-VL-1.5B-Instruct/)", "pass --text-encoder DIR (a Qwen2 folder)")
    return hart


def check_group_size(p: argparse.ArgumentParser, group_size: int, flag: str = "--group-size") -> None:
    """Per-group int4 needs a positive even group; whether it divides the layer widths is checked against
    the model (quantization.recipes.check_group_size) once it is loaded."""
    if group_size <= 0 or group_size % 2:
        p.error(f"{flag} must be a positive even number, got {group_size}")
