"""Labels and input normalization that travel with a `.tflite` for Android.

TFLite metadata proper needs a metadata writer; the only one, `tflite-support` 0.4.4 (July
2023, unmaintained), pins `protobuf<4` while TensorFlow 2.21 needs `protobuf>=6.31`, and its
native module needs libusb: it does not install beside this stack (checked). So the model
gets two sidecar files instead, written atomically next to it:

- `<stem>.labels.txt`: one label per line, line i = class i (the format Android's Task
  Library / ML Kit expect as the associated labels file);
- `<stem>.json`: {"model": file name, "labels_file", "labels", "input": {"name", "shape",
  "dtype", "scale", "zero_point", "normalization": {"mean": [...], "std": [...]}}, "output":
  {"name", "shape", "dtype", "scale", "zero_point", "meaning"}, "tfkd_version"}.

An app normalizes a pixel as `(pixel - mean) / std` and then, for an int8/uint8 input,
quantizes it as `round(value / scale) + zero_point`.

Example:

    >>> import keras, tfkd.tflite as tfl
    >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> _ = tfl.convert(m, "/tmp/md.tflite")
    >>> info = tfl.write_metadata("/tmp/md.tflite", labels=["cat", "dog"],
    ...                           normalization=(127.5, 127.5), output_meaning="logits")
    >>> info["labels_file"]
    'md.labels.txt'
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np

from .errors import TFLiteError
from .files import write_atomic
from .inspection import inspect


def _listify(v):
    if v is None:
        return None
    return np.atleast_1d(np.asarray(v, dtype=np.float64)).tolist()


def sidecar_paths(tflite_path):
    stem, _ = os.path.splitext(os.fspath(tflite_path))
    return stem + ".json", stem + ".labels.txt"


def write_metadata(tflite_path, labels=None, normalization=None, output_meaning=None,
                   extra=None):
    """Writes `<stem>.json` (and `<stem>.labels.txt` when labels are given) beside the model.

    Args:
      tflite_path: the `.tflite` file.
      labels: class names, index = class id; must match the output's last dimension.
      normalization: `(mean, std)` (scalars or per-channel lists) the app applies to raw
        input, or a dict with "mean" and "std".
      output_meaning: e.g. "logits", "probabilities", "embedding".
      extra: more JSON-serializable fields.

    Returns:
      The dict written to the JSON file.
    """
    report = inspect(tflite_path)
    json_path, labels_path = sidecar_paths(tflite_path)
    inp, out = report.inputs[0], report.outputs[0]
    if labels is not None:
        labels = [str(label) for label in labels]
        classes = out.shape_signature[-1] if out.shape_signature else None
        if classes and classes > 0 and classes != len(labels):
            raise TFLiteError(
                f"{len(labels)} labels for an output of {classes} classes: give one label "
                "per output unit.")
        if any("\n" in label for label in labels):
            raise TFLiteError("Labels cannot contain newlines (one label per line).")
    norm = None
    if normalization is not None:
        if isinstance(normalization, dict):
            mean, std = normalization.get("mean"), normalization.get("std")
        else:
            mean, std = normalization
        if np.any(np.asarray(std, dtype=np.float64) == 0):
            raise TFLiteError("normalization std contains 0: pass the divisor the model "
                              "expects (e.g. 255 or 127.5).")
        norm = {"mean": _listify(mean), "std": _listify(std)}

    def io(t):
        return {"name": t.name, "shape": list(t.shape_signature), "dtype": t.dtype,
                "scale": t.scale, "zero_point": t.zero_point}

    info = {
        "model": os.path.basename(os.fspath(tflite_path)),
        "labels_file": os.path.basename(labels_path) if labels is not None else None,
        "labels": labels,
        "input": dict(io(inp), normalization=norm),
        "output": dict(io(out), meaning=output_meaning),
        "tfkd_version": getattr(sys.modules.get(__package__), "__version__", None),
    }
    if extra:
        info.update(extra)
    if labels is not None:
        write_atomic(labels_path, ("\n".join(labels) + "\n").encode("utf-8"))
    write_atomic(json_path, (json.dumps(info, indent=2) + "\n").encode("utf-8"))
    return info


def read_metadata(tflite_path):
    """The sidecar dict written by `write_metadata` (None when there is none)."""
    json_path, _ = sidecar_paths(tflite_path)
    if not os.path.exists(json_path):
        return None
    with open(json_path, encoding="utf-8") as f:
        return json.load(f)


__all__ = ["write_metadata", "read_metadata", "sidecar_paths"]
