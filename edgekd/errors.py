"""Error types that decide how the CLI reports a failure.

`EdgekdError` is a *user* error (bad recipe, missing file, unsupported model): the CLI prints
its one-paragraph message and exits 2 without a traceback. Anything else is an internal error
(exit 1). We never use `assert` for user input: it vanishes under `python -O`.
"""
from __future__ import annotations


class EdgekdError(Exception):
    """A problem with what the user gave us; the message says what and how to fix it."""


class RecipeError(EdgekdError):
    """The recipe (YAML or --set overrides) is invalid."""


class DataError(EdgekdError):
    """A data file or column is missing, empty or malformed."""


class ModelError(EdgekdError):
    """A model folder or file cannot be used (missing, not a classifier, unsafe format)."""


class ProfileError(EdgekdError):
    """A device profile is unknown or malformed."""


class ExportValidationError(EdgekdError):
    """The exported ONNX model disagrees with the PyTorch model it came from."""

    def __init__(self, message: str, failures: list[dict]):
        super().__init__(message)
        self.failures = failures


class NpuFallbackError(EdgekdError):
    """The NPU's own compiler leaves nodes of a build meant to run wholly on the NPU to the CPU."""


class Interrupted(EdgekdError):
    """Ctrl-C during training: a checkpoint was saved; the same command resumes."""


class TrainingFault(EdgekdError):
    """Training diverged (NaN/Inf loss or exploding gradients); the last good checkpoint is kept."""
