"""What is inside a `.tflite` file: ops, tensor dtypes, I/O quantization, size.

`inspect` loads the model with the LiteRT interpreter (`ai_edge_litert`; `tf.lite.Interpreter`
is deprecated) for the op list and tensor details, and reads the flatbuffer itself for what the
interpreter does not expose: which tensors are constants and each op's options (dilation,
fused activation...), which the Edge TPU checker needs.

Example:

    >>> import keras, tfkd.tflite as tfl
    >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> report = tfl.convert(m, "/tmp/dense.tflite")
    >>> tfl.inspect("/tmp/dense.tflite").op_counts
    {'FULLY_CONNECTED': 1}
"""
from __future__ import annotations

import collections
import dataclasses
import os
import re

import numpy as np

from .errors import ModelFileError

_FLOAT_DTYPES = ("float32", "float16", "float64")
_INT8_DTYPES = ("int8", "uint8")


@dataclasses.dataclass
class TensorInfo:
    index: int
    name: str
    dtype: str
    shape: tuple
    shape_signature: tuple
    scale: float | None = None
    zero_point: int | None = None
    per_channel: bool = False
    constant: bool = False

    @property
    def is_float(self):
        return self.dtype in _FLOAT_DTYPES

    @property
    def is_dynamic(self):
        return any(d < 0 for d in self.shape_signature)

    def to_dict(self):
        return dataclasses.asdict(self)


@dataclasses.dataclass
class OpInfo:
    index: int
    name: str  # builtin op name, e.g. "CONV_2D"
    inputs: list  # TensorInfo, in operand order; optional operands are skipped
    outputs: list
    options: dict = dataclasses.field(default_factory=dict)

    @property
    def float_tensors(self):
        return [t for t in self.inputs + self.outputs if t.is_float]

    def to_dict(self):
        return {
            "index": self.index,
            "name": self.name,
            "inputs": [(t.name, t.dtype) for t in self.inputs],
            "outputs": [(t.name, t.dtype) for t in self.outputs],
            "options": {k: v for k, v in self.options.items() if _jsonable(v)},
        }


@dataclasses.dataclass
class ModelReport:
    """What `inspect` returns (and `convert`, for the file it wrote)."""

    path: str | None
    size_bytes: int
    ops: list
    tensors: list
    inputs: list
    outputs: list

    @property
    def op_counts(self):
        return dict(collections.Counter(op.name for op in self.ops))

    @property
    def tensor_dtypes(self):
        return dict(collections.Counter(t.dtype for t in self.tensors))

    @property
    def has_dynamic_shapes(self):
        return any(t.is_dynamic for t in self.tensors)

    @property
    def is_fully_int8(self):
        """True when every activation is int8/uint8 (int32 only for constants: biases,
        shapes) and no float tensor remains anywhere, I/O included."""
        for t in self.tensors:
            if t.dtype in _INT8_DTYPES:
                continue
            if t.dtype in ("int32", "int64") and t.constant:
                continue
            return False
        return True

    def to_dict(self):
        return {
            "path": self.path,
            "size_bytes": self.size_bytes,
            "op_counts": self.op_counts,
            "tensor_dtypes": self.tensor_dtypes,
            "is_fully_int8": self.is_fully_int8,
            "has_dynamic_shapes": self.has_dynamic_shapes,
            "inputs": [_io_dict(t) for t in self.inputs],
            "outputs": [_io_dict(t) for t in self.outputs],
            "ops": [op.to_dict() for op in self.ops],
        }

    def __str__(self):
        lines = [f"{self.path or '<bytes>'}: {self.size_bytes} bytes, {len(self.ops)} ops, "
                 f"fully int8: {self.is_fully_int8}"]
        for kind, ts in (("input", self.inputs), ("output", self.outputs)):
            for t in ts:
                q = f" scale={t.scale:.6g} zero_point={t.zero_point}" if t.scale else ""
                lines.append(f"  {kind} {t.name}: {t.dtype}{list(t.shape_signature)}{q}")
        for name, n in sorted(self.op_counts.items()):
            lines.append(f"  {name:<24} x{n}")
        return "\n".join(lines)


def _io_dict(t):
    return {"name": t.name, "shape": list(t.shape_signature), "dtype": t.dtype,
            "scale": t.scale, "zero_point": t.zero_point}


def _jsonable(v):
    return isinstance(v, (int, float, str, bool, type(None)))


def read_model_bytes(path) -> bytes:
    """The bytes of a `.tflite` file, with clear errors for missing / non-files."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelFileError(
            f"No .tflite file at '{path}'. Check the path, or create it with "
            "tfkd.tflite.convert(model, path).")
    if os.path.isdir(path):
        raise ModelFileError(f"'{path}' is a folder, not a .tflite file.")
    with open(path, "rb") as f:
        return f.read()


def load_interpreter(model, num_threads=None, delegates=False):
    """A LiteRT interpreter for a path or bytes, tensors allocated.

    `delegates=False` keeps XNNPACK out so that the op list is the file's own (the delegate
    shows up as an extra DELEGATE op otherwise).
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    content = model if isinstance(model, (bytes, bytearray)) else read_model_bytes(model)
    where = "<bytes>" if isinstance(model, (bytes, bytearray)) else os.fspath(model)
    kwargs = {"model_content": bytes(content), "num_threads": num_threads}
    if not delegates:
        kwargs["experimental_op_resolver_type"] = \
            OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        interpreter = Interpreter(**kwargs)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        raise ModelFileError(
            f"'{where}' is not a loadable TFLite model ({_first_line(e)}). The file is corrupt "
            "or truncated, or needs ops this runtime lacks (Flex ops need the "
            "tensorflow-lite-select-tf-ops runtime); re-create it with tfkd.tflite.convert."
        ) from e
    return interpreter


def _first_line(e):
    s = str(e).strip().splitlines()
    return s[0] if s else type(e).__name__


def _schema():
    from ai_edge_litert import schema_py_generated as schema

    return schema


def _enum_names(cls):
    return {v: k for k, v in vars(cls).items() if not k.startswith("_") and isinstance(v, int)}


def _read_flatbuffer(content: bytes):
    """(constant tensor indices, per-op options dict) for subgraph 0."""
    schema = _schema()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(content, 0))
    graph = model.subgraphs[0]
    constants = set()
    for i, t in enumerate(graph.tensors):
        buf = model.buffers[t.buffer] if t.buffer < len(model.buffers) else None
        if buf is not None and (buf.data is not None and len(buf.data) or
                                getattr(buf, "size", 0)):
            constants.add(i)
    options = []
    for op in graph.operators:
        opts = {}
        if op.builtinOptions is not None:
            for k, v in vars(op.builtinOptions).items():
                opts[k] = v
        options.append(opts)
    return constants, options, graph, model


def constant_value(content: bytes, tensor_index: int):
    """The value of a constant tensor of subgraph 0 as a numpy array (None if not constant)."""
    schema = _schema()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(content, 0))
    t = model.subgraphs[0].tensors[tensor_index]
    buf = model.buffers[t.buffer]
    if buf.data is None or not len(buf.data):
        return None
    dtype = {v: k.lower() for k, v in vars(schema.TensorType).items()
             if not k.startswith("_")}[t.type]
    arr = np.frombuffer(np.asarray(buf.data, dtype=np.uint8).tobytes(), dtype=np.dtype(dtype))
    return arr.reshape(t.shape) if t.shape is not None and len(t.shape) else arr


def inspect(model) -> ModelReport:
    """Lists a `.tflite` model's ops, tensors and I/O.

    Args:
      model: path to a `.tflite` file, or its bytes.

    Returns:
      `ModelReport` with `ops` (each with `name`, `inputs`, `outputs` as `TensorInfo` with
      name / dtype / shape / quantization), `op_counts`, `tensor_dtypes`, `inputs`, `outputs`,
      `size_bytes`, `is_fully_int8`, `has_dynamic_shapes`; `to_dict()` gives plain JSON.

    Raises:
      ModelFileError: the file does not exist or is not a valid TFLite model.
    """
    content = model if isinstance(model, (bytes, bytearray)) else read_model_bytes(model)
    content = bytes(content)
    path = None if isinstance(model, (bytes, bytearray)) else os.fspath(model)
    try:
        interpreter = load_interpreter(content)
    except ModelFileError as e:
        # A Flex model is valid but this runtime cannot prepare it: read the file itself.
        if "Select TensorFlow op" in str(e.__cause__):
            return _report_from_flatbuffer(content, path)
        if path:
            raise ModelFileError(str(e).replace("'<bytes>'", f"'{path}'")) from e
        raise
    try:
        constants, options, graph, model_t = _read_flatbuffer(content)
    except Exception as e:  # flatbuffer accessors raise assorted errors on garbage
        raise ModelFileError(f"'{path}' has an unreadable flatbuffer ({e}).") from e

    tensors = {}
    num_file_tensors = len(graph.tensors or [])
    for d in interpreter.get_tensor_details():
        # Kernels add scratch tensors after the file's own; they are not part of the model.
        if d["index"] >= num_file_tensors:
            continue
        q = d.get("quantization_parameters") or {}
        scales = np.asarray(q.get("scales", []))
        zps = np.asarray(q.get("zero_points", []))
        scale, zp = d["quantization"]
        tensors[d["index"]] = TensorInfo(
            index=int(d["index"]),
            name=d["name"],
            dtype=np.dtype(d["dtype"]).name,
            shape=tuple(int(s) for s in d["shape"]),
            shape_signature=tuple(int(s) for s in d.get("shape_signature", d["shape"])),
            scale=float(scale) if scale else (float(scales[0]) if scales.size else None),
            zero_point=int(zp) if scale else (int(zps[0]) if zps.size else None),
            per_channel=bool(scales.size > 1),
            constant=int(d["index"]) in constants,
        )

    # Ops come from the file (the interpreter lists them only through a private method; with
    # no delegate its list is the file's, op for op: checked on float, fp16, dynamic and int8
    # files); tensors from the interpreter, which resolves their quantization.
    op_names = _enum_names(_schema().BuiltinOperator)
    ops = []
    for i, op in enumerate(graph.operators or []):
        ops.append(OpInfo(
            index=i,
            name=_op_name(model_t, op, op_names),
            inputs=[tensors[j] for j in _indices(op.inputs) if j in tensors],
            outputs=[tensors[j] for j in _indices(op.outputs) if j in tensors],
            options=options[i],
        ))

    def io(details):
        return [tensors[d["index"]] for d in details]

    return ModelReport(
        path=path,
        size_bytes=len(content),
        ops=ops,
        tensors=[tensors[k] for k in sorted(tensors)],
        inputs=io(interpreter.get_input_details()),
        outputs=io(interpreter.get_output_details()),
    )


def _report_from_flatbuffer(content, path):
    """A `ModelReport` read from the flatbuffer alone (for models this runtime cannot load,
    e.g. with Flex ops)."""
    schema = _schema()
    constants, options, graph, model = _read_flatbuffer(content)
    type_names = {v: k.lower() for k, v in vars(schema.TensorType).items()
                  if not k.startswith("_")}
    op_names = _enum_names(schema.BuiltinOperator)
    tensors = []
    for i, t in enumerate(graph.tensors):
        q = t.quantization
        scales = list(q.scale) if q is not None and q.scale is not None else []
        zps = list(q.zeroPoint) if q is not None and q.zeroPoint is not None else []
        shape = tuple(int(d) for d in (t.shape if t.shape is not None else ()))
        sig = t.shapeSignature if t.shapeSignature is not None and len(t.shapeSignature) \
            else shape
        tensors.append(TensorInfo(
            index=i, name=t.name.decode() if isinstance(t.name, bytes) else str(t.name),
            dtype=type_names.get(t.type, str(t.type)), shape=shape,
            shape_signature=tuple(int(d) for d in sig),
            scale=float(scales[0]) if scales else None,
            zero_point=int(zps[0]) if zps else None, per_channel=len(scales) > 1,
            constant=i in constants))
    ops = []
    for i, op in enumerate(graph.operators):
        ops.append(OpInfo(index=i, name=_op_name(model, op, op_names),
                          inputs=[tensors[j] for j in op.inputs if j >= 0],
                          outputs=[tensors[j] for j in op.outputs if j >= 0],
                          options=options[i]))
    return ModelReport(path=path, size_bytes=len(content), ops=ops, tensors=tensors,
                       inputs=[tensors[j] for j in graph.inputs],
                       outputs=[tensors[j] for j in graph.outputs])


def _indices(values):
    """Tensor indices of an operator's inputs or outputs; -1 marks an omitted optional one."""
    return [int(j) for j in (values if values is not None else ()) if j >= 0]


def _op_name(model, op, op_names):
    """An operator's name as the interpreter gives it: the builtin's, or a custom op's own."""
    code = model.operatorCodes[op.opcodeIndex]
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    name = op_names.get(builtin, str(builtin))
    if name == "CUSTOM" and code.customCode:
        name = code.customCode.decode() if isinstance(code.customCode, bytes) \
            else str(code.customCode)
    return name


# TFLite tensor names carry the Keras layer path, with name-scope suffixes added by tracing:
# "functional_1/net_1/conv1_1/Relu;functional_1/net_1/conv1_1/convolution".
_SUFFIX = re.compile(r"_\d+$")
_GENERIC = {"serving_default", "StatefulPartitionedCall", "arith.constant", "tfl.pseudo_qconst"}


def layer_for_tensor(name: str, layer_names=None) -> str | None:
    """The Keras layer that produced a TFLite tensor, from the tensor's name.

    With `layer_names` (all layer names of the Keras model, nested ones included) the deepest
    path component that names a layer wins; without, the component before the TF op name.
    """
    first = name.split(";")[0]
    parts = [p for p in first.split("/") if p]
    if len(parts) < 2:
        return None
    if layer_names:
        layer_names = set(layer_names)
        for p in reversed(parts[:-1]):
            if p in layer_names:
                return p
            stripped = _SUFFIX.sub("", p)
            if stripped in layer_names:
                return stripped
        return None
    candidate = _SUFFIX.sub("", parts[-2])
    return None if candidate in _GENERIC else candidate


def layer_for_op(op: OpInfo, layer_names=None) -> str | None:
    """The Keras layer responsible for a TFLite op: outputs first, then constant operands
    (weights carry the layer's name even when the output is a graph output), then inputs."""
    candidates = list(op.outputs) + [t for t in op.inputs if t.constant] + \
        [t for t in op.inputs if not t.constant]
    for t in candidates:
        layer = layer_for_tensor(t.name, layer_names)
        if layer:
            return layer
    return None


def keras_layer_names(model) -> set:
    """All layer names of a Keras model, nested models' layers included."""
    names = set()
    stack = [model]
    while stack:
        m = stack.pop()
        names.add(m.name)
        for layer in getattr(m, "layers", []) or []:
            names.add(layer.name)
            if getattr(layer, "layers", None):
                stack.append(layer)
    return names


__all__ = ["inspect", "ModelReport", "OpInfo", "TensorInfo", "layer_for_op",
           "layer_for_tensor", "keras_layer_names", "load_interpreter"]
