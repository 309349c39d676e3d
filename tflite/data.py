"""Turning any data source into single samples.

Calibration, evaluation and parity all run a batch-1 `.tflite` sample by sample, so every
source is reduced to `(x, y)` pairs of one sample each. Accepted sources:

- a numpy array (or tensor) of inputs, first axis = samples;
- a tuple `(x, y)` or `(x, y, sample_weight)` of arrays;
- a dict of arrays (tfds style, e.g. `{"image": ..., "label": ...}`);
- a `tf.data.Dataset`, batched or not, whose elements are any of the above;
- a generator / iterable yielding any of the above.

Batched vs single is decided per element from the model's sample shape, so one source can be
used with models of any batch signature. A missing trailing channel axis of size 1 is added
(MNIST's `(N, 28, 28)` feeds a `(28, 28, 1)` model).
"""
from __future__ import annotations

import itertools

import numpy as np

from .errors import EmptyDataError, RepresentativeDataError

_X_KEYS = ("image", "images", "x", "input", "inputs", "features")
_Y_KEYS = ("label", "labels", "y", "target", "targets")


def _to_numpy(v):
    if isinstance(v, np.ndarray):
        return v
    if hasattr(v, "numpy"):
        return v.numpy()
    return np.asarray(v)


def _split(element):
    """(x, y) from one element of a source."""
    if isinstance(element, dict):
        x_key = next((k for k in _X_KEYS if k in element), None)
        if x_key is None:
            if len(element) == 1:
                x_key = next(iter(element))
            else:
                raise RepresentativeDataError(
                    f"Cannot tell the input in a dict with keys {sorted(element)}: name it one "
                    f"of {_X_KEYS}, or map the data set to (x, y) tuples.")
        y_key = next((k for k in _Y_KEYS if k in element), None)
        return element[x_key], (element[y_key] if y_key else None)
    if isinstance(element, (tuple, list)):
        if len(element) in (2, 3):
            return element[0], element[1]
        if len(element) == 1:
            return element[0], None
        raise RepresentativeDataError(
            f"Elements of {len(element)} parts are ambiguous: use x, (x, y) or "
            "(x, y, sample_weight).")
    return element, None


def _dims_match(shape, expected):
    return len(shape) == len(expected) and all(
        e is None or e < 0 or s == e for s, e in zip(shape, expected))


def _as_batch(x, sample_shape):
    """(batch, was_single): x viewed as a batch of samples of `sample_shape`, adding a missing
    channel axis of size 1."""
    x = _to_numpy(x)
    if sample_shape is None:
        return (x, False) if x.ndim >= 1 else (x[None], True)
    sample_shape = tuple(sample_shape)
    if _dims_match(x.shape, sample_shape):
        return x[None], True
    if x.ndim >= 1 and _dims_match(x.shape[1:], sample_shape):
        return x, False
    if sample_shape and sample_shape[-1] == 1:
        if _dims_match(x.shape + (1,), sample_shape):
            return x[None, ..., None], True
        if x.ndim >= 1 and _dims_match(x.shape[1:] + (1,), sample_shape):
            return x[..., None], False
    raise RepresentativeDataError(
        f"Data of shape {x.shape} does not fit the model's input of shape "
        f"{list(sample_shape)} per sample (batch axis first, optional): reshape the data or "
        "convert the model for this input shape.")


def _elements(data):
    """Iterate the elements of a source; top-level arrays and tuples count as one batch."""
    try:
        import tensorflow as tf  # optional here: sources may be pure numpy
        if isinstance(data, tf.data.Dataset):
            return data.as_numpy_iterator()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(data, (np.ndarray, dict)) or hasattr(data, "numpy"):
        return iter([data])
    if isinstance(data, tuple) and data and hasattr(data[0], "shape"):
        return iter([data])
    if callable(data) and not hasattr(data, "__iter__"):
        data = data()
    if hasattr(data, "__iter__"):
        return iter(data)
    raise RepresentativeDataError(
        f"Unsupported data source {type(data).__name__}: pass a numpy array, (x, y) arrays, "
        "a dict of arrays, a tf.data.Dataset or a generator.")


def iter_samples(data, sample_shape=None, max_samples=None):
    """Yields `(x, y)` for single samples; `x` keeps no batch axis, `y` may be None."""
    if data is None:
        raise RepresentativeDataError("No data given.")
    count = 0
    for element in _elements(data):
        x, y = _split(element)
        xb, single = _as_batch(x, sample_shape)
        yb = None
        if y is not None:
            y = _to_numpy(y)
            yb = y[None] if single else y
            if yb.ndim == 0 or yb.shape[0] != xb.shape[0]:
                raise RepresentativeDataError(
                    f"{xb.shape[0]} inputs but labels of shape {y.shape} in one element: give one "
                    "label per sample.")
        for i in range(xb.shape[0]):
            yield xb[i], (None if yb is None else yb[i])
            count += 1
            if max_samples is not None and count >= max_samples:
                return


def take_samples(data, sample_shape=None, max_samples=None, what="data"):
    """Lists the samples (x, y) of a source, with a clear error when it is empty."""
    samples = list(itertools.islice(iter_samples(data, sample_shape), max_samples))
    if not samples:
        raise EmptyDataError(
            f"The {what} is empty: it yielded no sample. Pass a non-empty array or data set "
            "(check filters, `take(0)` or an exhausted generator).")
    return samples


__all__ = ["iter_samples", "take_samples"]
