"""Procedural captioned-image world (generator + analyser) for training and judging the default model."""
