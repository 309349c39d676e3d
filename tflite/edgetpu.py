"""Coral Edge TPU: an offline compatibility check, and the real compiler when installed.

`check_edgetpu` applies the rules of Coral's "TensorFlow models on the Edge TPU" page
(coral.ai/docs/edgetpu/models-intro) to a `.tflite` file:

- every tensor is 8-bit integer (int32 only for constants: biases, shapes);
- shapes are static (a dynamic shape is an error: the compiler refuses such a model) and the
  batch is 1;
- a tensor of rank > 3 may only have its 3 innermost dimensions larger than 1;
- the op is in the supported-operations table, within its limits (1-D softmax of at most
  16,000 elements, the same x/y dilation, no fused activation on pools and concatenation,
  MEAN / PAD along x and y only, STRIDED_SLICE with unit strides and no ellipsis / new-axis
  mask...). HARD_SWISH, LEAKY_RELU, GELU, BATCH_MATMUL, TILE and DEQUANTIZE are not in it;
- RESIZE_BILINEAR / RESIZE_NEAREST_NEIGHBOR take a 3-D input (batch 1), an error otherwise.
  Nearest `UpSampling2D` lowers to RESHAPE + TILE, and TILE is an error.

Some limits are not published: Coral's table says a resize "may not be mapped to the Edge TPU
to avoid loss in precision" depending on its sizes. Such findings are *uncertain*: the op is
counted as mapped, `EdgeTPUOp.certain` is False, `EdgeTPUOp.warnings` says why, and
`EdgeTPUReport.uncertain` lists them (only `compile_edgetpu` can settle them). They never
change `compatible`, which stays about certain failures. A resize is uncertain when
(thresholds and sources beside `_resize_doubts`):

- it uses half-pixel centers (TFLite op version 3: the TF2 default of `keras.layers.Resizing`,
  `UpSampling2D(interpolation="bilinear")` and `tf.image.resize`; for nearest also
  align_corners). Compilers 14 and 15 answered "Operation version not supported"; no public
  report confirms that compiler 16 maps it;
- its scale factor is not an integer, or not the same for height and width (downscales
  included);
- its factor is 8 or more (the compiler found such upsamplings "won't run precisely enough");
- its output is larger than 128 pixels in height or width (reported unmapped from 256x256 up,
  mapped at 128x128).

So the most common segmentation upsampling, an integer 2x bilinear `Resizing` /
`UpSampling2D` with the TF2 defaults, is *compatible but uncertain*: every other condition
holds, but half_pixel_centers=True is what older compilers refused. If the compiler refuses
it, resize with `tf.compat.v1.image.resize_bilinear(..., half_pixel_centers=False)` inside a
layer (version 2, certain) or upsample with `Conv2DTranspose`, and retrain.

The compiler maps ops in execution order and cuts the graph at the first op it cannot map:
that op and everything after it run on the CPU. A float-I/O model's input QUANTIZE and
output DEQUANTIZE run on the CPU at the edges without cutting the graph; they are reported
(convert with `input_type="int8"`/`"uint8"` to drop them). So does a detector's end: the
custom op `TFLite_Detection_PostProcess` (decode + NMS, in float) and the DEQUANTIZEs that
feed it run on the CPU by design, as in every Coral SSD model, and count as edges when no
network op comes after them; a DEQUANTIZE that precedes network ops (the converter's order,
before `tfkd.tflite.cpu_ops_last`) is the cut it is.

`compile_edgetpu` runs `edgetpu_compiler` when it is on PATH and parses its log; it is not
installable from the registries this project uses, so `check_edgetpu` is the offline check.

Example:

    >>> import numpy as np, keras, tfkd.tflite as tfl
    >>> m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3),
    ...                       keras.layers.ReLU(6.0), keras.layers.GlobalAveragePooling2D(),
    ...                       keras.layers.Dense(2)])
    >>> _ = tfl.convert(m, "/tmp/e.tflite", quantization="int8", input_type="int8",
    ...                 representative_data=np.random.rand(16, 8, 8, 3).astype("float32"))
    >>> tfl.check_edgetpu("/tmp/e.tflite").compatible
    True
"""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess

import numpy as np

from .errors import EdgeTPUCompilerNotFoundError, EdgeTPUError
from .inspection import _read_flatbuffer, _schema, inspect, layer_for_op, read_model_bytes

INSTALL_HINT = (
    "Install it from Coral's apt repository on a Debian/Ubuntu x86-64 host: add "
    "'deb https://packages.cloud.google.com/apt coral-edgetpu-stable main' to "
    "/etc/apt/sources.list.d/coral-edgetpu.list (with Google's apt key), then "
    "'apt-get update && apt-get install edgetpu-compiler'. Offline, "
    "tfkd.tflite.check_edgetpu(path) applies the same documented rules.")

# Coral's supported-operations table (compiler 16): op -> its documented limits, checked below.
SUPPORTED_OPS = {
    "ADD", "SUB", "MUL", "MAXIMUM", "MINIMUM", "SQUARED_DIFFERENCE", "RSQRT",
    "LOGISTIC", "RELU", "RELU6", "RELU_N1_TO_1", "TANH", "PRELU",
    "AVERAGE_POOL_2D", "MAX_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D",
    "TRANSPOSE_CONV", "FULLY_CONNECTED", "L2_NORMALIZATION", "MEAN", "SUM", "REDUCE_MAX",
    "REDUCE_MIN", "PAD", "RESHAPE", "EXPAND_DIMS", "SQUEEZE", "PACK", "TRANSPOSE",
    "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "SLICE", "STRIDED_SLICE", "SPLIT",
    "SPACE_TO_DEPTH", "SOFTMAX", "QUANTIZE", "UNIDIRECTIONAL_SEQUENCE_LSTM",
}

# Ops students commonly contain that are NOT mapped, with what to use instead.
UNSUPPORTED_HINTS = {
    "HARD_SWISH": "use ReLU6 (MobileNetV3's hard-swish runs on the CPU)",
    "LEAKY_RELU": "use ReLU or PReLU",
    "GELU": "use ReLU",
    "BATCH_MATMUL": "attention / matmul of two activations is not supported; use Dense/Conv",
    "TILE": "nearest UpSampling2D lowers to RESHAPE+TILE; use Resizing or bilinear upsampling",
    "DEQUANTIZE": "a float island: the graph leaves int8 here",
    "EXP": "no exponent on the Edge TPU",
    "DIV": "multiply by a constant reciprocal instead",
    "GATHER": "no gather on the Edge TPU",
    "CAST": "keep the graph in one integer type",
    "DEPTH_TO_SPACE": "pixel shuffle (tf.nn.depth_to_space, tfkd's PixelShuffle) is not in "
                      "Coral's table, so the graph is cut here; upsample with Conv2DTranspose "
                      "(tfkd.students.upsampling.upsample(..., method='transpose'), all on the "
                      "Edge TPU) or bilinear resize + conv (method='resize')",
}


@dataclasses.dataclass
class EdgeTPUOp:
    index: int
    op: str
    supported: bool  # the op itself satisfies Coral's rules
    mapped: bool  # it would run on the Edge TPU (supported and before the cut)
    reason: str
    layer: str | None = None
    # CPU edge that does not cut the graph: float-I/O QUANTIZE / DEQUANTIZE, or a detector's
    # post-process and the DEQUANTIZEs feeding it (CPU by design).
    boundary: bool = False
    # False when `mapped` is a best guess: the op meets every published rule, but reports show
    # the compiler refusing ops like it (see `warnings`). Ops on the CPU are certain.
    certain: bool = True
    warnings: list = dataclasses.field(default_factory=list)  # why it may not map


@dataclasses.dataclass
class EdgeTPUReport:
    path: str | None
    ops: list
    first_unmapped: EdgeTPUOp | None

    @property
    def compatible(self):
        """Every op (but the CPU edges: float-I/O conversions, a detector's post-process)
        maps to the Edge TPU."""
        return self.first_unmapped is None

    @property
    def num_mapped(self):
        return sum(op.mapped for op in self.ops)

    @property
    def uncertain(self):
        """Ops counted as mapped that the compiler may still refuse (`EdgeTPUOp.warnings`
        says why). If it refuses one, it cuts the graph there, as at `first_unmapped`."""
        return [op for op in self.ops if op.mapped and not op.certain]

    def to_dict(self):
        return {"path": self.path, "compatible": self.compatible,
                "num_mapped": self.num_mapped, "num_ops": len(self.ops),
                "first_unmapped": dataclasses.asdict(self.first_unmapped)
                if self.first_unmapped else None,
                "uncertain": [dataclasses.asdict(op) for op in self.uncertain],
                "ops": [dataclasses.asdict(op) for op in self.ops]}

    def __str__(self):
        edges = any(op.boundary for op in self.ops)
        verdict = ("compatible: every op maps to the Edge TPU" +
                   (" but the CPU edges marked below" if edges else "")) if self.compatible else (
            f"NOT fully compatible: the compiler cuts the graph at op #"
            f"{self.first_unmapped.index} {self.first_unmapped.op}"
            + (f" (layer '{self.first_unmapped.layer}')" if self.first_unmapped.layer else "")
            + f": {self.first_unmapped.reason}; it and the ops after it run on the CPU")
        lines = [f"Edge TPU check of {self.path or '<bytes>'}: {verdict}.",
                 f"{self.num_mapped} of {len(self.ops)} ops on the Edge TPU."]
        design = [op for op in self.ops if op.boundary and "CPU by design" in op.reason]
        if design:
            lines.append(
                f"{len(design)} op{'' if len(design) == 1 else 's'} on the CPU by design: the "
                f"detector's {_POSTPROCESS} (decode + NMS in float) and the DEQUANTIZEs feeding "
                "it, after the Edge TPU part.")
        doubts = self.uncertain
        if doubts:
            first = doubts[0]
            after = sum(1 for op in self.ops if op.index > first.index and op.mapped)
            lines.append(
                f"{len(doubts)} of them may not map (the offline check cannot be sure; "
                "compile_edgetpu can): "
                + "; ".join(f"#{op.index} {op.op}: {' / '.join(op.warnings)}" for op in doubts)
                + f". If #{first.index} does not map, the graph is cut there and the {after} "
                f"mapped op{'' if after == 1 else 's'} after it run{'s' if after == 1 else ''} "
                "on the CPU too.")
        for op in self.ops:
            status = "CPU" if not op.mapped else "Edge TPU" if op.certain else "TPU?"
            layer = f" [{op.layer}]" if op.layer else ""
            lines.append(f"  #{op.index:<3} {op.op:<26} {status:<8} {op.reason}{layer}")
        return "\n".join(lines)


def _non_unit(shape):
    return [d for d in shape if d != 1]


def _const(model, graph, index):
    t = graph.tensors[index]
    buf = model.buffers[t.buffer]
    if buf.data is None or not len(buf.data):
        return None
    names = {v: k.lower() for k, v in vars(_schema().TensorType).items()
             if not k.startswith("_")}
    arr = np.frombuffer(np.asarray(buf.data, dtype=np.uint8).tobytes(),
                        dtype=np.dtype(names[t.type]))
    return arr.reshape(t.shape) if t.shape is not None and len(t.shape) else arr


def _op_rule(op, model, graph):
    """'' when the op meets its documented limits, else the reason it does not."""
    name, opts = op.name, op.options
    fused = opts.get("fusedActivationFunction", 0)
    if name not in SUPPORTED_OPS:
        hint = UNSUPPORTED_HINTS.get(name)
        return f"{name} is not supported by the Edge TPU" + (f": {hint}" if hint else "")
    if name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        if opts.get("dilationWFactor", 1) != opts.get("dilationHFactor", 1):
            return "dilation differs in x and y; the Edge TPU needs the same dilation"
    if name in ("AVERAGE_POOL_2D", "MAX_POOL_2D", "CONCATENATION") and fused:
        return f"{name} with a fused activation is not supported"
    if name == "SOFTMAX":
        shape = op.inputs[0].shape
        if len(_non_unit(shape)) > 1:
            return f"softmax over a {list(shape)} tensor: only 1-D softmax is supported"
        if int(np.prod(shape)) > 16000:
            return "softmax over more than 16,000 elements"
    if name in ("MEAN", "SUM", "REDUCE_MAX", "REDUCE_MIN") and len(op.inputs) > 1:
        axes = _const(model, graph, op.inputs[1].index)
        rank = len(op.inputs[0].shape)
        if axes is None:
            return "reduction axes are not constant"
        if rank == 4 and not set(int(a) % 4 for a in np.ravel(axes)) <= {1, 2}:
            return f"reduction over axes {np.ravel(axes).tolist()}: only x/y are supported"
    if name == "PAD" and len(op.inputs) > 1:
        pads = _const(model, graph, op.inputs[1].index)
        if pads is None:
            return "paddings are not constant"
        if pads.shape[0] == 4 and (np.any(pads[0] != 0) or np.any(pads[3] != 0)):
            return "padding along batch or channels: only x/y padding is supported"
    if name == "STRIDED_SLICE":
        if opts.get("ellipsisMask", 0) or opts.get("newAxisMask", 0):
            return "strided slice with an ellipsis or new-axis mask"
        strides = _const(model, graph, op.inputs[3].index) if len(op.inputs) > 3 else None
        if strides is None or np.any(strides != 1):
            return "strided slice with strides other than 1"
    if name == "CONCATENATION":
        consts = [t for t in op.inputs if t.constant]
        if consts and (len(op.inputs) != 2 or
                       np.any(_const(model, graph, consts[0].index) != 0)):
            return "concatenation with a constant input that is not an all-zero pad"
    if name in _RESIZE_OPS:
        # Coral's table: "Input/output is a 3-dimensional tensor".
        if len(_non_unit(op.inputs[0].shape[:-3])) or len(op.inputs[0].shape) > 4:
            return "resize input is not a 3-D tensor (batch 1)"
    return ""


_RESIZE_OPS = ("RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR")
# Upsampling factors from which the compiler judged bilinear resizing imprecise: issue #63
# (google-coral/edgetpu, 2020) logged "Image-interpolation layer won't run precisely enough on
# Edge TPU" for a backbone's stride-16/32 map upsampled to the input size; fixed in a 2020
# compiler, but Coral's table still says mapping depends on sizes "to avoid loss in
# precision", so a large factor stays a doubt. 8 is where decoders without skip connections
# (FCN-8s, DeepLab's x8 / x16 head) start; 2x and 4x are the common decoder steps.
_LARGE_FACTOR = 8
# Output height or width beyond which resizes were reported unmapped: #31 (compiler 2.0:
# 2x bilinear to 512x512 "Operation is otherwise supported, but not mapped due to some
# unspecified limitation", the same net at 128x128 mapped), #187 (a U-Net at 256x256 not fully
# mapped with compiler 15, compilation failing with 16, mapped at 128x128), #597 (2022: resizes
# of a 512x512 net left on the CPU).
_LARGE_OUTPUT = 128


def _resize_doubts(op, version):
    """Why a RESIZE_* op that meets the published rules may still not be mapped."""
    opts = op.options
    doubts = []
    half_pixel = bool(opts.get("halfPixelCenters", False))
    corners = bool(opts.get("alignCorners", False))
    # TFLite gives version 3 to bilinear resizes with half-pixel centers and nearest ones with
    # half-pixel centers or aligned corners (lite/tools/versioning/op_version.cc). Compilers
    # 14.1 and 15.0 answered "Operation version not supported" for them (google-coral/edgetpu
    # #187, #206, #396, #420; tensorflow/tensorflow#42024), 2.x could not even parse them
    # (#45, #152); the workaround reported in #187 is half_pixel_centers=False. Compiler 16 is
    # the current one and no public report says it fixed this: a doubt, not an error.
    if version >= 3 or half_pixel or (corners and op.name == "RESIZE_NEAREST_NEIGHBOR"):
        attr = "half_pixel_centers=True" if half_pixel else "align_corners=True"
        doubts.append(
            f"{attr} (op version {version}): compilers 14-15 refused it ('Operation version "
            "not supported'); if yours does, resize with half_pixel_centers=False "
            "(tf.compat.v1.image.resize_*) or upsample with Conv2DTranspose")
    (h_in, w_in), (h_out, w_out) = op.inputs[0].shape[-3:-1], op.outputs[0].shape[-3:-1]
    fh, fw = h_out / h_in, w_out / w_in
    # Coral: "Depending on input/output size, this operation may not be mapped to the Edge TPU
    # to avoid loss in precision"; the maintainers on #31: the compiler refuses the op when
    # the precision loss passes a threshold they do not disclose. Integer, equal factors are
    # the case every report of a mapped resize had; #206 (a (1, 2) upsample of 4x834)
    # crashed the compiler intermittently.
    if fh != int(fh) or fw != int(fw) or fh != fw:
        doubts.append(f"scale factor {_factor(fh)} x {_factor(fw)} ({h_in}x{w_in} -> "
                      f"{h_out}x{w_out}) is not one integer upscale for both axes; the "
                      "compiler may refuse it for precision")
    elif fh >= _LARGE_FACTOR:
        doubts.append(f"{int(fh)}x upscale: the compiler judged large bilinear upsamplings "
                      "imprecise ('won't run precisely enough'); upsample in steps of 2")
    if max(h_out, w_out) > _LARGE_OUTPUT:
        doubts.append(f"output {h_out}x{w_out} is larger than {_LARGE_OUTPUT} pixels a side; "
                      "resizes to 256x256 and 512x512 were reported unmapped where 128x128 "
                      "mapped")
    return doubts


def _factor(f):
    return str(int(f)) if f == int(f) else f"{f:.3g}"


def _tensor_rule(op):
    for t in op.inputs + op.outputs:
        if t.constant:
            if t.dtype not in ("int8", "uint8", "int32", "int64"):
                return f"constant '{t.name}' is {t.dtype}; the Edge TPU needs 8-bit weights"
            continue
        if t.dtype not in ("int8", "uint8"):
            return (f"tensor '{t.name}' is {t.dtype}; the Edge TPU runs only 8-bit integer "
                    "tensors: convert with quantization='int8' or 'qat'")
        shape = t.shape
        if len(shape) > 3 and len(_non_unit(shape[:-3])):
            if shape[0] != 1:
                return f"tensor '{t.name}' has batch {shape[0]}; the Edge TPU needs batch 1"
            return (f"tensor '{t.name}' of shape {list(shape)} has more than 3 non-unit "
                    "innermost dimensions")
    return ""


def check_edgetpu(model, layer_names=None) -> EdgeTPUReport:
    """Applies Coral's documented Edge TPU rules to a `.tflite` file, offline.

    Args:
      model: path to a `.tflite` (or its bytes).
      layer_names: optional Keras layer names, to name layers exactly in the report.

    Returns:
      `EdgeTPUReport`: `.compatible`, `.ops` (each `EdgeTPUOp` with `mapped`, `reason`,
      `certain` and `warnings`), `.first_unmapped` (where the compiler cuts the graph, from
      certain failures only), `.uncertain` (ops counted as mapped that may not map), readable
      `str()`.

    Raises:
      EdgeTPUError: the model has dynamic shapes (the compiler rejects it outright).
      ModelFileError: missing or corrupt file.
    """
    content = bytes(model) if isinstance(model, (bytes, bytearray)) else read_model_bytes(model)
    report = inspect(content)
    path = None if isinstance(model, (bytes, bytearray)) else os.fspath(model)
    dynamic = [t for t in report.tensors if t.is_dynamic]
    if dynamic:
        t = dynamic[0]
        raise EdgeTPUError(
            f"'{path or '<bytes>'}' has dynamic shapes (tensor '{t.name}' has shape "
            f"{list(t.shape_signature)}); the Edge TPU compiler needs every shape known at "
            "compile time. Convert with tfkd.tflite.convert(..., batch_size=1) from a model "
            "whose inputs have fixed height, width and channels.")
    _, _, graph, fb_model = _read_flatbuffer(content)
    input_ids = {t.index for t in report.inputs}
    output_ids = {t.index for t in report.outputs}
    design = _postprocess_side(report, output_ids)
    last_network = max((op.index for op in report.ops if op.index not in design), default=-1)

    verdicts, cut = [], None
    for op in report.ops:
        layer = layer_for_op(op, layer_names)
        if op.index in design and (op.index > last_network or op.name == _POSTPROCESS):
            what = ("decode + non-maximum suppression in float, CPU by design (every Edge TPU "
                    "detector ends with it)" if op.name == _POSTPROCESS else
                    f"feeds {_POSTPROCESS}: the int8 network ends here, CPU by design")
            verdicts.append(EdgeTPUOp(op.index, op.name, False, False, what, layer,
                                      boundary=True))
            continue
        if op.index in design:
            # A DEQUANTIZE for the post-process with network ops after it: a real cut.
            after = [o for o in report.ops if o.index > op.index and o.index not in design]
            reason = (f"DEQUANTIZE feeding {_POSTPROCESS} comes before {len(after)} network "
                      f"op{'' if len(after) == 1 else 's'} (#{after[0].index} {after[0].name}"
                      f"...#{after[-1].index}): the compiler cuts the graph here; re-order "
                      "the file with tfkd.tflite.cpu_ops_last (tfkd.tflite.convert does)")
            verdict = EdgeTPUOp(op.index, op.name, False, False, reason, layer)
            cut = cut or verdict
            verdicts.append(verdict)
            continue
        is_boundary = (
            (op.name == "QUANTIZE" and op.inputs and op.inputs[0].index in input_ids
             and op.inputs[0].is_float) or
            (op.name == "DEQUANTIZE" and op.outputs and op.outputs[0].index in output_ids
             and op.outputs[0].is_float))
        if is_boundary:
            verdicts.append(EdgeTPUOp(op.index, op.name, False, False,
                                      "float I/O conversion, runs on the CPU at the graph "
                                      "edge (convert with int8/uint8 I/O to drop it)",
                                      layer, boundary=True))
            continue
        reason = _tensor_rule(op) or _op_rule(op, fb_model, graph)
        supported = not reason
        mapped = supported and cut is None
        warnings = []
        if supported and op.name in _RESIZE_OPS:
            code = fb_model.operatorCodes[graph.operators[op.index].opcodeIndex]
            warnings = _resize_doubts(op, int(code.version))
        if supported and cut is not None:
            reason = f"after the cut at op #{cut.index} {cut.op}: runs on the CPU"
        elif mapped and warnings:
            reason = "may not map: " + "; ".join(warnings)
        # Ops after the cut run on the CPU whatever their doubts: certain, warnings kept.
        verdict = EdgeTPUOp(op.index, op.name, supported, mapped,
                            reason or "mapped to Edge TPU", layer,
                            certain=not (mapped and warnings), warnings=warnings)
        if not supported and cut is None:
            cut = verdict
        verdicts.append(verdict)
    return EdgeTPUReport(path=path, ops=verdicts, first_unmapped=cut)


_POSTPROCESS = "TFLite_Detection_PostProcess"


def _postprocess_side(report, output_ids):
    """Indices of the post-process ops and of the DEQUANTIZEs that feed only them."""
    post = {op.index for op in report.ops if op.name == _POSTPROCESS}
    if not post:
        return set()
    consumers = {}
    for op in report.ops:
        for t in op.inputs:
            consumers.setdefault(t.index, set()).add(op.index)
    feeding = {op.index for op in report.ops if op.name == "DEQUANTIZE" and op.outputs and all(
        t.index not in output_ids and consumers.get(t.index) and consumers[t.index] <= post
        for t in op.outputs)}
    return post | feeding


_ROW = re.compile(r"^([A-Z][A-Z0-9_]+)\s+(\d+)\s+(\S.*?)\s*$")


def parse_compiler_log(text: str) -> dict:
    """Parses `edgetpu_compiler` output (stdout or its .log).

    Returns dict: version, total_ops, subgraphs, ops_on_edgetpu, ops_on_cpu, operators (list
    of {op, count, status, mapped}), success.
    """
    def grab(pattern, cast=int):
        m = re.search(pattern, text, re.MULTILINE)
        return cast(m.group(1)) if m else None

    operators, in_table = [], False
    for line in text.splitlines():
        if re.match(r"^\s*Operator\s+Count\s+Status", line):
            in_table = True
            continue
        if in_table:
            m = _ROW.match(line.strip())
            if m:
                status = m.group(3)
                operators.append({"op": m.group(1), "count": int(m.group(2)),
                                  "status": status, "mapped": status.startswith("Mapped")})
    on_tpu = grab(r"Number of operations that will run on Edge TPU:\s*(\d+)")
    on_cpu = grab(r"Number of operations that will run on CPU:\s*(\d+)")
    total = grab(r"Total number of operations:\s*(\d+)")
    if on_tpu is None and operators:
        on_tpu = sum(o["count"] for o in operators if o["mapped"])
        on_cpu = sum(o["count"] for o in operators if not o["mapped"])
    return {
        "version": grab(r"Edge TPU Compiler version\s+(\S+)", str),
        "success": bool(re.search(r"Model (successfully )?compiled successfully|"
                                  r"Model successfully compiled", text)),
        "total_ops": total,
        "subgraphs": grab(r"Number of Edge TPU subgraphs:\s*(\d+)"),
        "ops_on_edgetpu": on_tpu,
        "ops_on_cpu": on_cpu,
        "operators": operators,
        "output_model": grab(r"Output model:\s*(\S+)", str),
    }


def compile_edgetpu(model, out_dir=None, timeout=600):
    """Compiles a `.tflite` with `edgetpu_compiler` (when on PATH) and parses its log.

    Returns:
      `parse_compiler_log` result plus "log" (full text) and "returncode".

    Raises:
      EdgeTPUCompilerNotFoundError: the compiler is not installed (see `INSTALL_HINT`).
      EdgeTPUError: dynamic shapes, or the compiler failed.
    """
    path = os.fspath(model)
    check_edgetpu(path)  # fail on dynamic shapes / bad files before calling out
    exe = shutil.which("edgetpu_compiler")
    if exe is None:
        raise EdgeTPUCompilerNotFoundError(
            "edgetpu_compiler is not installed (not on PATH). " + INSTALL_HINT)
    out_dir = out_dir or os.path.dirname(os.path.abspath(path))
    os.makedirs(out_dir, exist_ok=True)
    proc = subprocess.run([exe, "-s", "-o", out_dir, path], capture_output=True, text=True,
                          timeout=timeout)
    log = proc.stdout + proc.stderr
    result = parse_compiler_log(log)
    result.update(log=log, returncode=proc.returncode)
    if proc.returncode != 0:
        raise EdgeTPUError(f"edgetpu_compiler failed ({proc.returncode}): {log.strip()[-800:]}")
    return result


__all__ = ["check_edgetpu", "compile_edgetpu", "parse_compiler_log", "EdgeTPUReport",
           "EdgeTPUOp", "SUPPORTED_OPS"]
