"""Staged training of the model/ architecture on the procedural world (python -m train --help)."""
