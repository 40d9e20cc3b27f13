"""Reference runtime: runs a method list (eager model or exported bundle) exactly as the phone apps do."""

import sys as _sys

from runtime_py import quiet as _quiet

_quiet.install()  # before torch/torchao/ExecuTorch load: their known noise off the terminal
if _sys.argv[:1] == ["-m"]:  # `python -m <cli>` (runpy sets argv[0] to the module path only later)
    from runtime_py.cli import install_sigint

    install_sigint()
