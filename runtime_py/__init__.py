"""Reference runtime: runs a method list (eager model or exported bundle) exactly as the phone apps do."""

from runtime_py import quiet as _quiet

_quiet.install()  # before torch/torchao/ExecuTorch load: their known noise off the terminal
