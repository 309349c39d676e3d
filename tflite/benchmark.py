"""Size and CPU latency of a `.tflite` with LiteRT.

A pure measurement: nothing here judges the numbers. Inputs are random data of the model's
dtype and shape (latency does not depend on values for these kernels). The runs go through
LiteRT's `CompiledModel` where it supports the file, else through the `Interpreter`
(`runtime=`; see `tfkd.tflite.runtime`); the result's "runtime" says which one ran. Only the
run is timed (`run_by_index` / `invoke`): inputs are written once, outputs not read.

Example:

    >>> import keras, tfkd.tflite as tfl
    >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> _ = tfl.convert(m, "/tmp/b.tflite")
    >>> r = tfl.benchmark("/tmp/b.tflite", num_threads=(1,), runs=20)
    >>> r["latency_ms"][1]["p50"] > 0, r["runtime"]
    (True, 'compiled_model')
"""
from __future__ import annotations

import os
import time

import numpy as np

from .inspection import load_interpreter, read_model_bytes
from .runtime import check_runtime, open_executor


def _random_input(detail, rng):
    shape = [max(int(d), 1) for d in detail["shape"]]
    dt = np.dtype(detail["dtype"])
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return rng.integers(info.min, int(info.max) + 1, size=shape).astype(dt)
    if dt.kind == "b":
        return rng.integers(0, 2, size=shape).astype(dt)
    return rng.random(shape).astype(dt)


def _resize_input(interpreter, shape):
    from .errors import TFLiteError

    detail = interpreter.get_input_details()[0]
    signature = list(detail.get("shape_signature", detail["shape"]))
    shape = [int(d) for d in shape]
    if len(shape) != len(signature) or any(s != -1 and s != d for s, d in
                                           zip(signature, shape)):
        raise TFLiteError(
            f"input_shape={tuple(shape)} does not fit the file's input {tuple(signature)} (-1: "
            "any size); give a shape that keeps its fixed dimensions, or input_shape=None.")
    interpreter.resize_tensor_input(detail["index"], shape, strict=True)
    interpreter.allocate_tensors()


def benchmark(model, num_threads=(1, 2), warmup=5, runs=50, seed=0, runtime="auto",
              input_shape=None):
    """Measures size and latency (ms) per thread count.

    Args:
      input_shape: for a file whose input has dynamic dimensions (-1 in its shape signature,
        e.g. a super-resolution model that takes any image size), the shape to time it at,
        e.g. (1, 128, 128, 1); the input is resized to it (the Interpreter runs such files).
        None: the file's own shape. A file with a fixed input refuses another shape.
      runtime: "auto" (`CompiledModel` where it supports the file, else the `Interpreter`),
        "compiled_model" (an error where it does not apply) or "interpreter".

    Returns:
      {"path", "size_bytes", "runs", "runtime" ("compiled_model" or "interpreter"),
      "fallback_reason" (why "auto" fell back; None otherwise),
      "latency_ms": {threads: {"p50", "p90", "mean", "min"}}}
    """
    check_runtime(runtime)
    content = bytes(model) if isinstance(model, (bytes, bytearray)) else read_model_bytes(model)
    rng = np.random.default_rng(seed)
    result = {"path": None if isinstance(model, (bytes, bytearray)) else os.fspath(model),
              "size_bytes": len(content), "runs": int(runs), "runtime": None,
              "fallback_reason": None, "latency_ms": {}}
    if isinstance(num_threads, int):
        num_threads = (num_threads,)
    for threads in num_threads:
        interpreter = load_interpreter(content, num_threads=int(threads), delegates=True)
        if input_shape is not None:
            _resize_input(interpreter, input_shape)
        executor = open_executor(content, interpreter, runtime=runtime,
                                 num_threads=int(threads))
        result["runtime"], result["fallback_reason"] = executor.runtime, \
            executor.fallback_reason
        for d in interpreter.get_input_details():
            executor.set(d["index"], _random_input(d, rng))
        for _ in range(warmup):
            executor.invoke()
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            executor.invoke()
            times.append((time.perf_counter() - t0) * 1e3)
        t = np.asarray(times)
        result["latency_ms"][int(threads)] = {
            "p50": float(np.percentile(t, 50)), "p90": float(np.percentile(t, 90)),
            "mean": float(t.mean()), "min": float(t.min())}
    return result


__all__ = ["benchmark"]
