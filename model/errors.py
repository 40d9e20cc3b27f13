"""UserError: the one exception type for failures a user can fix (bad arguments, checkpoint, bundle).

It lives at the bottom of the package (model/) so that every layer can raise it; each CLI catches it
once (runtime_py.cli.cli_main) and prints `prog: error: <problem>; <what to do>` with its exit code.
"""

from __future__ import annotations

BAD_INPUT, FAILED_CHECK = 2, 1  # exit codes: unusable arguments/inputs, a check that ran and failed


class UserError(ValueError):
    """A problem with the user's input or environment; `str()` is the whole one-line message. A ValueError,
    so code that already handles bad values keeps working."""

    def __init__(self, problem: str, fix: str = "", code: int = BAD_INPUT) -> None:
        problem = " ".join(str(problem).split())  # one line, whatever the parts contained
        super().__init__(f"{problem}; {fix}" if fix else problem)
        self.code = code
