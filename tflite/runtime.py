"""Which LiteRT API executes a `.tflite`: `CompiledModel` where it supports the file, else the
`Interpreter`.

`ai_edge_litert.compiled_model.CompiledModel` is LiteRT's current execution API; the
`Interpreter` is the older one. On float32, fp16, dynamic-range, int8 (int8 / uint8 I/O)
classifiers, an int8 segmenter and float / int8 detectors (with the
`TFLITE_DETECTION_POSTPROCESS` custom op) both gave bit-identical outputs (np.array_equal,
20 inputs each, XNNPACK on both), so the choice changes no number, only which API runs.

`open_executor(content, interpreter, runtime="auto")` gives an object with
`set(index, array)`, `invoke()`, `get(index)` over tensor indices (those of the
interpreter's `get_input_details` / `get_output_details`), whichever API runs. Tensor
details (dtype, shape, scale, zero point) always come from the interpreter: `CompiledModel`
only executes.

"auto" falls back to the Interpreter (and says why, in `executor.fallback_reason`) when:

- an input has a dynamic dimension (`shape_signature` -1, e.g. `convert(..., batch_size=None)`):
  the callers resize such inputs to each sample's shape, which the Interpreter does in place;
  `CompiledModel` would need `resize_input_tensor` and fresh buffers per shape (it ran a
  resized input bit-identically, but its buffers are sized once, at creation);
- an input or output dtype `TensorBuffer` cannot read or write (int64, int16, string...):
  `write` raises for int64, and an int32 array written to an int64 buffer is taken byte for
  byte (a GATHER then read out-of-bounds indices);
- the file has more than one signature, or its first signature's tensors are not the
  interpreter's inputs / outputs (`run_by_index(0, ...)` would run another subgraph);
- `CompiledModel` refuses the file, or its first run fails (a Flex file loads, then fails
  to allocate at the first run; the interpreter already refused it at load).

Every signature / tensor-detail query goes to `CompiledModel` before its first run: calling
`get_output_tensor_details` after a run on a detector with the post-process op was seen to
corrupt the heap.
"""
from __future__ import annotations

import numpy as np

RUNTIMES = ("auto", "compiled_model", "interpreter")
COMPILED_MODEL, INTERPRETER = "compiled_model", "interpreter"
# What TensorBuffer.write / read take (ai_edge_litert 2.3, TensorBuffer._DTYPE_STRINGS).
_BUFFER_DTYPES = {np.dtype(d) for d in
                  ("float32", "float16", "int32", "int8", "uint8", "bool")}
_ENVIRONMENT = None


class CompiledModelUnsupported(Exception):
    """The file is one `CompiledModel` cannot run here (the reason is the message)."""


def check_runtime(runtime):
    if runtime not in RUNTIMES:
        from .errors import TFLiteError

        raise TFLiteError(f"runtime={runtime!r}: use one of {', '.join(map(repr, RUNTIMES))}.")
    return runtime


class InterpreterExecutor:
    """Executes with the interpreter itself (which also gives the tensor details)."""

    runtime = INTERPRETER

    def __init__(self, interpreter, fallback_reason=None):
        self.interpreter = interpreter
        self.fallback_reason = fallback_reason

    def set(self, index, value):
        self.interpreter.set_tensor(index, value)

    def invoke(self):
        self.interpreter.invoke()

    def get(self, index):
        return self.interpreter.get_tensor(index)


class CompiledModelExecutor:
    """Executes with a `CompiledModel`, one input / output `TensorBuffer` per tensor, made
    once: the model's shapes are static (dynamic ones go to the interpreter)."""

    runtime = COMPILED_MODEL
    fallback_reason = None

    def __init__(self, content, interpreter, num_threads=None):
        from ai_edge_litert.compiled_model import CompiledModel, CpuOptions, Options

        inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
        for kind, details in (("input", inputs), ("output", outputs)):
            for d in details:
                sig = d.get("shape_signature", d["shape"])
                if kind == "input" and any(int(s) < 0 for s in sig):
                    raise CompiledModelUnsupported(
                        f"input {d['name']} has a dynamic shape {[int(s) for s in sig]} "
                        "(resized per sample, which the Interpreter does in place)")
                if np.dtype(d["dtype"]) not in _BUFFER_DTYPES:
                    raise CompiledModelUnsupported(
                        f"{kind} {d['name']} is {np.dtype(d['dtype']).name}, which "
                        "TensorBuffer cannot write / read")
        # num_threads None: the runtime decides (0), as the interpreter's default does.
        options = Options(cpu_options=CpuOptions(num_threads=int(num_threads or 0)))
        try:
            model = CompiledModel.from_buffer(bytes(content), environment=_environment(),
                                              options=options)
            if model.get_num_signatures() != 1:
                raise CompiledModelUnsupported(
                    f"the file has {model.get_num_signatures()} signatures")
            # All queries before the first run (see the module docstring).
            key = model.get_signature_by_index(0)["key"]
            names = model.get_signature_list()[key]
            in_details = model.get_input_tensor_details(key)
            out_details = model.get_output_tensor_details(key)
            in_idx = [int(in_details[n]["index"]) for n in names["inputs"]]
            out_idx = [int(out_details[n]["index"]) for n in names["outputs"]]
            if sorted(in_idx) != sorted(int(d["index"]) for d in inputs) or \
                    sorted(out_idx) != sorted(int(d["index"]) for d in outputs):
                raise CompiledModelUnsupported(
                    "its signature's tensors are not the interpreter's inputs / outputs")
            in_buffers, out_buffers = model.create_input_buffers(0), \
                model.create_output_buffers(0)
        except CompiledModelUnsupported:
            raise
        except Exception as e:  # refused by CompiledModel
            raise CompiledModelUnsupported(f"CompiledModel did not load it ({_first_line(e)})") \
                from e
        self.model = model
        self._inputs = dict(zip(in_idx, in_buffers))
        self._outputs = dict(zip(out_idx, out_buffers))
        self._in_details = {int(d["index"]): d for d in inputs}
        self._out_details = {int(d["index"]): d for d in outputs}
        self._in_order, self._out_order = in_buffers, out_buffers
        self._sizes = {i: (int(np.prod(d["shape"])), np.dtype(d["dtype"]), tuple(d["shape"]))
                       for i, d in self._out_details.items()}

    def set(self, index, value):
        """Writes an input; refuses (ValueError, as `Interpreter.set_tensor` does) data whose
        dtype or shape is not the input's, which TensorBuffer would take byte for byte."""
        d = self._in_details[index]
        value = np.asarray(value)
        if value.dtype != np.dtype(d["dtype"]) or tuple(value.shape) != tuple(d["shape"]):
            raise ValueError(
                f"Cannot set tensor: got {value.dtype.name} {list(value.shape)} for input "
                f"{d['name']} of {np.dtype(d['dtype']).name} {list(d['shape'])}")
        self._inputs[index].write(value)

    def invoke(self):
        self.model.run_by_index(0, self._in_order, self._out_order)

    def get(self, index):
        n, dtype, shape = self._sizes[index]
        return self._outputs[index].read(n, dtype).reshape(shape)


def open_executor(content, interpreter, runtime="auto", num_threads=None):
    """The executor for a file whose `interpreter` (tensors allocated) is already made.

    runtime: "auto" (CompiledModel where it supports the file, else the Interpreter, with
    `fallback_reason` set), "compiled_model" (TFLiteError where it does not) or
    "interpreter". The executor's `runtime` says which one runs.
    """
    check_runtime(runtime)
    if runtime == INTERPRETER:
        return InterpreterExecutor(interpreter)
    try:
        executor = CompiledModelExecutor(content, interpreter, num_threads=num_threads)
        if runtime == "auto":
            _first_run(executor)
        return executor
    except CompiledModelUnsupported as e:
        if runtime == COMPILED_MODEL:
            from .errors import TFLiteError

            raise TFLiteError(
                f"LiteRT's CompiledModel cannot run this .tflite: {e}. Use runtime='auto' "
                "(falls back to the Interpreter) or runtime='interpreter'.") from e
        return InterpreterExecutor(interpreter, fallback_reason=str(e))


def _first_run(executor):
    """One run on zeros, so that "auto" falls back on a file that loads but cannot run
    (Flex ops allocate lazily, at the first run)."""
    for i, d in executor._in_details.items():
        executor.set(i, np.zeros(d["shape"], np.dtype(d["dtype"])))
    try:
        executor.invoke()
    except Exception as e:
        raise CompiledModelUnsupported(f"its first run failed ({_first_line(e)})") from e


def _environment():
    """One LiteRT Environment for the process (each one registers the accelerators, and
    logs it, again)."""
    global _ENVIRONMENT
    if _ENVIRONMENT is None:
        import os

        from ai_edge_litert import compiled_model
        from ai_edge_litert.environment import Environment, EnvironmentOptions

        # The runtime libraries lie beside the wrapper (what CompiledModel's own default is).
        _ENVIRONMENT = Environment.create(options=EnvironmentOptions(
            runtime_path=os.path.dirname(os.path.abspath(compiled_model.__file__))))
    return _ENVIRONMENT


def _first_line(e):
    s = str(e).strip().splitlines()
    return s[0] if s else type(e).__name__


__all__ = ["open_executor", "check_runtime", "RUNTIMES", "InterpreterExecutor",
           "CompiledModelExecutor", "CompiledModelUnsupported"]
