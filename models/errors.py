"""Errors raised by :mod:`models`.

Bad input (wrong shapes, NaN scores, a single class) must surface as one of these, naming what was
wrong, instead of a deep torch or scikit-learn traceback from the middle of a training round.
"""

from __future__ import annotations


class ModelError(ValueError):
    """Base class for every error raised by :mod:`models`."""


class InvalidInput(ModelError):
    """Arrays handed to a model, metric or preprocessing step are malformed (shape, dtype, NaN, labels)."""


class ShapeMismatch(ModelError):
    """A parameter vector or serialised state does not fit the model or preprocessor it is loaded into."""
