"""Operator order for the Edge TPU, and the output layout of an SSD detector's file.

`cpu_ops_last`: every int8 network op before the first CPU-only op.

Coral's compiler walks a file's operators in order and cuts at the first op it cannot map:
that op and everything after it run on the CPU. The order is only one topological order of
the graph, chosen by the converter; for a detector with two heads it emits one head's
DEQUANTIZE (feeding the float post-process) before the other head's convolutions, which
sends that whole head to the CPU (measured: the class head, 6 of 12 head ops). The graph is
the same under any topological order, so `cpu_ops_last` re-emits the operators with the
int8 ones first (stable: original order among them) and the ops that only a CPU runs
(DEQUANTIZE, custom ops, float ops) as late as their consumers allow.

Written here rather than taken from a library: no maintained tool exposes this pass
(the converter has no option for it). The file is read and written with the generated
flatbuffer code of the TFLite schema that `ai_edge_litert` ships (`schema_py_generated`,
object API), so every table (buffers, custom options, signatures, metadata) is carried over
by the schema's own code.

`detection_outputs`: the four outputs of `TFLite_Detection_PostProcess` laid out the way
every reader of SSD files expects them (see its docstring): by index, by tensor name and by
signature name.

Example:

    >>> import numpy as np, keras, tfkd.tflite as tfl
    >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> _ = tfl.convert(m, "/tmp/r.tflite")
    >>> content = open("/tmp/r.tflite", "rb").read()
    >>> [op.name for op in tfl.inspect(tfl.cpu_ops_last(content)).ops]
    ['FULLY_CONNECTED']
"""
from __future__ import annotations

import heapq

_INTEGER = {"INT8", "UINT8", "INT16", "INT32", "INT64", "BOOL"}


def _schema():
    from ai_edge_litert import schema_py_generated as schema

    return schema


def _deferred(op, model, graph, schema, op_names, input_ids):
    """True for an op that only the CPU runs: it should come as late as possible."""
    code = model.operatorCodes[op.opcodeIndex]
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    name = op_names.get(builtin, "")
    if name == "CUSTOM" or name == "DEQUANTIZE":
        return True
    type_names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    tensors = [i for i in list(op.inputs) + list(op.outputs) if i >= 0]
    is_float = any(type_names.get(graph.tensors[i].type) not in _INTEGER for i in tensors
                   if not (name == "QUANTIZE" and i in input_ids))
    return is_float


def cpu_ops_last(content: bytes) -> bytes:
    """The same model with its operators re-ordered: accelerator-mappable int8 ops first.

    Returns `content` unchanged when the order is already right. The computation is
    identical (same operators, tensors and buffers; only their sequence in subgraph 0 moves).
    """
    schema = _schema()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(content, 0))
    graph = model.subgraphs[0]
    op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    input_ids = set(graph.inputs)
    ops = list(graph.operators)
    producer = {}
    for i, op in enumerate(ops):
        for t in op.outputs:
            producer[t] = i
    deps = [{producer[t] for t in op.inputs if t >= 0 and t in producer} for op in ops]
    users = [[] for _ in ops]
    for i, d in enumerate(deps):
        for j in d:
            users[j].append(i)
    late = [_deferred(op, model, graph, schema, op_names, input_ids) for op in ops]
    waiting = [len(d) for d in deps]
    ready = [(late[i], i) for i in range(len(ops)) if waiting[i] == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        _, i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, (late[u], u))
    if len(order) != len(ops):
        raise ValueError("cpu_ops_last: the graph has a cycle; the file is malformed.")
    if order == list(range(len(ops))):
        return content
    graph.operators = [ops[i] for i in order]
    return _pack(model, len(content))


# The readers of detection files, and the layout each one takes (checked in their sources):
# - by index (subgraph outputs): LiteRT's and Coral's examples, pycoral's `detect.get_objects`
#   for a file without a signature, MediaPipe's defaults: 0 boxes, 1 classes, 2 scores,
#   3 count, the post-process op's own output order;
# - by signature name: pycoral >= 2.0 `detect.get_objects` for a file with a signature, and
#   the Model Maker / TF2 Object Detection API tutorials: output_0 count, output_1 scores,
#   output_2 classes, output_3 boxes (the names TF2's object-detection export produces);
# - by tensor name: TF1 Object Detection API files (Coral's own SSD models) name the outputs
#   TFLite_Detection_PostProcess, :1, :2, :3 in op order.
SIGNATURE_NAMES = {"count": "output_0", "scores": "output_1", "classes": "output_2",
                   "boxes": "output_3"}


def _pack(model, size):
    import flatbuffers

    builder = flatbuffers.Builder(size + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def detection_outputs(content: bytes, op_name="TFLite_Detection_PostProcess") -> bytes:
    """The file with its outputs laid out as SSD readers expect, for a file ending in the op.

    - subgraph outputs (what `get_output_details()` lists, what index readers use): the op's
      outputs in its order, boxes (1, K, 4), classes (1, K), scores (1, K), count (1,);
      the converter writes them so already (measured), this makes it a guarantee;
    - tensor names: `TFLite_Detection_PostProcess`, `...:1`, `...:2`, `...:3` (TF1 Object
      Detection API files, Coral's SSD models);
    - signature outputs: `output_0` count, `output_1` scores, `output_2` classes,
      `output_3` boxes, the names of TF2 Object Detection API files, which pycoral's
      `detect.get_objects` reads whenever a file has a signature (with the Keras names
      `boxes`... it would fail with a KeyError).

    Returns `content` unchanged when the file has no such op. Raises ValueError when the op's
    outputs are not all outputs of the model.
    """
    schema = _schema()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(content, 0))
    graph = model.subgraphs[0]
    post = [op for op in graph.operators
            if _custom_code(model.operatorCodes[op.opcodeIndex]) == op_name]
    if not post:
        return content
    if len(post) > 1:
        raise ValueError(f"detection_outputs: the file has {len(post)} {op_name} ops; a "
                         "detector ends in one.")
    outs = [int(t) for t in post[0].outputs]
    if len(outs) != 4 or not set(outs) <= {int(t) for t in graph.outputs}:
        raise ValueError(
            f"detection_outputs: {op_name}'s outputs {outs} are not the model's outputs "
            f"{list(graph.outputs)}: the detector must end in the post-process op.")
    others = [int(t) for t in graph.outputs if int(t) not in outs]
    graph.outputs = outs + others
    for i, t in enumerate(outs):
        graph.tensors[t].name = op_name + (f":{i}" if i else "")
    keys = ("boxes", "classes", "scores", "count")
    by_tensor = {t: SIGNATURE_NAMES[k] for t, k in zip(outs, keys)}
    for sig in model.signatureDefs or []:
        if sig.subgraphIndex not in (0, None):
            continue
        maps = [m for m in sig.outputs or [] if m.tensorIndex in by_tensor]
        rest = [m for m in sig.outputs or [] if m.tensorIndex not in by_tensor]
        for m in maps:
            m.name = by_tensor[m.tensorIndex]
        sig.outputs = sorted(maps, key=lambda m: m.name) + rest
    return _pack(model, len(content))


def _custom_code(code):
    name = code.customCode
    return name.decode() if isinstance(name, bytes) else name


__all__ = ["cpu_ops_last", "detection_outputs", "SIGNATURE_NAMES"]
