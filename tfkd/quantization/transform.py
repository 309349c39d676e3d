"""Rewrite a float Keras 3 functional model into a quantization-aware one.

The graph is read from `model.get_config()` (who feeds whom) and rebuilt with
`keras.models.clone_model(clone_function=..., call_function=...)`; no private graph internals.
Each layer keeps its name; what changes is its class and where fake-quants sit:

- A fake-quant goes where TFLite keeps an int8 tensor: after each conv / transposed conv /
  Dense / Add / Multiply / MEAN / activation, except when the only consumer fuses it
  (ReLU/ReLU6 after conv, Dense, Add or Multiply; a folded BatchNormalization) or owns its
  range (Concatenate, AveragePooling2D, bilinear Resizing / UpSampling2D: ops whose int8
  kernels need input and output on one scale).
- Same-scale ops (MaxPool, Reshape, Flatten, ZeroPadding, Cropping, Dropout, tfkd's
  PixelShuffle = DEPTH_TO_SPACE, ...) get none: their input's fake-quant is their range.
- Conv2DTranspose becomes TRANSPOSE_CONV with per-output-channel int8 weights (rounded in
  the layer, see `QuantizedConv2DTranspose` for why not by a fake-quant op) and its bias on
  the int32 grid. TF 2.21's converter fuses no activation into it: a ReLU after it (its own
  `activation` or a ReLU layer) is a separate int8 RELU op, so the transposed conv's output
  is quantized too, on the ReLU's range (exact: an int8 RELU on one scale only clamps).
- BatchNormalization after a conv / transposed conv / Dense is folded into it with its
  moving statistics; elsewhere it becomes a per-channel affine (int8 1x1 depthwise conv),
  like Rescaling and Normalization.
- Each conv / transposed conv / Dense / affine is told which layer quantizes its input
  (`_plan_bias_grids`), so that it rounds its bias to TFLite's int32 grid (input scale x
  weight scale) as the converter will.

- A Concatenate input that reaches it through same-scale ops (bilinear Resizing /
  UpSampling2D, pools, Reshape, ...) or that also feeds another layer (a U-Net skip) carries
  its own fake-quant; TF 2.21's converter refuses two ranges on one CONCATENATION ("same
  scale constraint") rather than requantizing. Such a group of tensors quantizes with one
  shared range (`_plan_shared_ranges`, `QuantizerMixin._shared`): the union of what each of
  its layers observes, written by its last layer into every layer's copy.

Known limits (each costs parity, never a float op):
- An AveragePooling2D / bilinear Resizing outside a shared group whose input is not produced
  by a quantizing layer with no other consumer (e.g. right after a Concatenate) runs in float
  in the Keras model, so its output is not snapped to the int8 grid (sub-LSB parity loss).
- A shared range is as wide as its widest member: a skip tensor with a narrower range of its
  own loses that resolution (TFLite's post-training quantizer does the same).
- A model from `keras.saving.load_model` predicts and converts as saved, but its groups keep
  their saved shared range in training until `calibrate` (or `layers.link_shared_ranges`) links
  them again.
- At exact rounding ties TFLite rounds half away from zero in the int8 domain and fake-quant
  rounds half up: AVERAGE_POOL_2D outputs differ by 1 LSB on such ties (~0.2 LSB mean at the
  pool itself). Simulating the kernel's rounding would put float ops into the exported graph,
  so inside the graph the pool keeps its exact average (unbiased, within 0.5 LSB); only a
  pool that is a model output is snapped. This is the largest parity cost of a pooled net
  (measured: 0.08 -> 0.17 LSB at a Concatenate -> AveragePooling2D); a pool as a
  DepthwiseConv2D with 1/N weights would round like fake-quant on non-negative inputs, at
  the cost of another op type. A Rescaling whose output grid sits half a step off its input grid
  (e.g. 1/127.5, offset -1 on 0..255) ties on every pixel; prefer Rescaling(1/255).
- RESIZE_BILINEAR rounds the same way (half away from zero on raw int8 values), and an
  integer upscale ties often: x2 with half-pixel centers weighs inputs by multiples of 1/16.
  On a tiny x2 SR net (Conv-ReLU -> bilinear UpSampling2D -> Conv-BN-ReLU -> Conv) 5% of the
  resize's outputs came out 1 LSB below the snapped Keras value, all in one direction, and
  the two convs after it summed that to 0.69 LSB mean (max 5) at the output, against 0.03
  for a Conv2DTranspose and 0.02 for a PixelShuffle in the same net. As for the pool, the
  kernel's rounding cannot be simulated without float ops in the exported graph.
- A transposed conv whose ReLU (its own or a ReLU layer) feeds a Concatenate directly: the
  RELU op requantizes from the transposed conv's range onto the Concatenate's, rounding as
  its kernel does (toy U-Net, Conv2DTranspose + ReLU -> Concatenate with a skip: 0.26 LSB
  mean at the output, 0.01 with a linear Conv2DTranspose).
"""

import numpy as np
import keras

from tfkd import _compat
from tfkd.quantization import layers as qlayers

_RELU_LIKE = ("relu", "relu6")


class UnsupportedLayerError(ValueError):
    """Raised by `quantize_model` with every layer it cannot quantize, each with a fix."""

    def __init__(self, problems):
        self.problems = list(problems)
        lines = "\n".join(f"  - '{name}' ({cls}): {fix}" for name, cls, fix in self.problems)
        super().__init__(
            f"quantize_model cannot quantize {len(self.problems)} layer(s):\n{lines}\n"
            "Rebuild the student from Conv2D / Conv2DTranspose / DepthwiseConv2D / Dense / "
            "BatchNormalization / ReLU(6) / Add / Multiply / Concatenate / pooling / Reshape / "
            "ZeroPadding / bilinear Resizing or UpSampling2D / tfkd's PixelShuffle layers (the "
            "ops an int8 TFLite graph runs; all but PixelShuffle map to the Edge TPU), then "
            "call quantize_model again.")


# --------------------------------------------------------------------------- graph reading

def _histories(obj):
    """Names of the layers whose outputs appear in a serialized call (args or kwargs)."""
    if isinstance(obj, dict):
        if obj.get("class_name") == "__keras_tensor__":
            return [obj["config"]["keras_history"][0]]
        return [n for v in obj.values() for n in _histories(v)]
    if isinstance(obj, (list, tuple)):
        return [n for v in obj for n in _histories(v)]
    return []


class _Graph:
    def __init__(self, model):
        config = model.get_config()
        self.model = model
        self.order = [entry["name"] for entry in config["layers"]]
        self.inbound = {}  # layer name -> list (per call) of producer names
        self.consumers = {name: [] for name in self.order}
        for entry in config["layers"]:
            nodes = [_histories(node) for node in entry.get("inbound_nodes", [])]
            self.inbound[entry["name"]] = nodes
            for producers in nodes:
                for p in producers:
                    self.consumers[p].append(entry["name"])
        self.outputs = set(_flatten_history_list(config["output_layers"]))
        self.inputs = set(_flatten_history_list(config["input_layers"]))

    def layer(self, name):
        return self.model.get_layer(name)

    def sole_consumer(self, name):
        """The one layer fed by `name`'s single output, or None (several, or a model output)."""
        if name in self.outputs or len(self.consumers[name]) != 1:
            return None
        return self.consumers[name][0]

    def sole_producer(self, name):
        nodes = self.inbound[name]
        if len(nodes) == 1 and len(nodes[0]) == 1:
            return nodes[0][0]
        return None


def _flatten_history_list(obj):
    # input_layers / output_layers: [name, node, index] or a (nested) list / dict of them.
    if isinstance(obj, (list, tuple)) and len(obj) == 3 and isinstance(obj[0], str):
        return [obj[0]]
    if isinstance(obj, dict):
        return [n for v in obj.values() for n in _flatten_history_list(v)]
    return [n for v in obj for n in _flatten_history_list(v)]


# --------------------------------------------------------------------------- classification

def _activation_name(layer):
    """The activation of a layer as a name ('relu', ...), or None when it is not one we know."""
    fn = getattr(layer, "activation", None)
    name = getattr(fn, "__name__", None)
    return name if name in qlayers.ACTIVATIONS else None


def _relu_kind(layer):
    """'relu' / 'relu6' for a ReLU layer TFLite fuses, else None."""
    cfg = layer.get_config()
    if cfg.get("negative_slope", 0.0) or cfg.get("threshold", 0.0):
        return None
    max_value = cfg.get("max_value")
    if max_value is None:
        return "relu"
    return "relu6" if float(max_value) == 6.0 else None


def _is_model(layer):
    return isinstance(layer, keras.Model)


_PASSTHROUGH = (
    # Same-scale ops: their int8 kernels keep the input's scale, so no fake-quant after them.
    keras.layers.MaxPooling2D, keras.layers.GlobalMaxPooling2D, keras.layers.Reshape,
    keras.layers.Flatten, keras.layers.ZeroPadding2D, keras.layers.Cropping2D,
    keras.layers.Dropout, keras.layers.SpatialDropout2D, keras.layers.GaussianNoise,
    keras.layers.GaussianDropout, keras.layers.Identity, keras.layers.Permute,
)

_FIXES = {
    "LeakyReLU": "LEAKY_RELU is not Edge TPU-mappable and its int8 kernel is not simulated: "
                 "use ReLU or ReLU6",
    "PReLU": "use ReLU or ReLU6",
    "ELU": "use ReLU or ReLU6",
    "SeparableConv2D": "split it into DepthwiseConv2D + Conv2D(kernel_size=1) (what TFLite "
                       "runs anyway), each followed by BatchNormalization if you want it",
    "UpSampling2D": "use UpSampling2D(interpolation='bilinear') or Resizing(interpolation="
                    "'bilinear') (nearest UpSampling2D converts to a 5-D RESHAPE + TILE)",
    "Lambda": "a Lambda layer's function cannot be inspected: replace it with built-in layers",
}


def _unsupported_fix(layer):
    cls = type(layer).__name__
    if cls in _FIXES:
        return _FIXES[cls]
    if isinstance(layer, keras.layers.RNN) or cls in ("LSTM", "GRU", "SimpleRNN",
                                                      "Bidirectional"):
        return ("recurrent layers have no int8 QAT path here: keep them out of the quantized "
                "student (or quantize post-training with tfkd.tflite.convert(..., "
                "quantization='dynamic'))")
    return ("not a layer tfkd.quantization knows how to simulate in int8: replace it with "
            "built-in layers, or leave it out of the student")


# Same-scale layers of tfkd itself, matched by registered name: `quantization/` rewrites
# models and imports none of the student builders (DESIGN.md, "Who imports whom").
_SAME_SCALE_REGISTERED = (
    "tfkd>PixelShuffle",  # tfkd.students.upsampling: DEPTH_TO_SPACE keeps its input's scale
    # tfkd.students.embedding: a training-only head, cut off before export (the exported
    # embedder ends at its input); kept float so that its margin loss trains the int8 embedder.
    "tfkd>CosineHead",
)
# tfkd layers that are an activation of TFLite (one int8 op on a fixed output scale).
_ACTIVATIONS_REGISTERED = {
    "tfkd.tflite>L2Normalization": "l2_normalize",  # tf.math.l2_normalize: L2_NORMALIZATION
}


def _registered_activation(layer):
    return _ACTIVATIONS_REGISTERED.get(keras.saving.get_registered_name(type(layer)))


def _classify(layer):
    """(kind, problem): kind names the rewrite rule; problem is a fix for unsupported layers."""
    L = keras.layers
    cls = type(layer)
    if cls is L.InputLayer:
        return "input", None
    if keras.saving.get_registered_name(cls) in _SAME_SCALE_REGISTERED:
        return "keep", None
    if _registered_activation(layer):
        if getattr(layer, "axis", -1) not in (-1, [-1]):
            return None, "L2 normalisation over an axis other than the last: TFLite's is 1-D"
        return "activation", None
    if cls is L.Conv2DTranspose:
        if layer.data_format != "channels_last":
            return None, "data_format='channels_first': TFLite is channels-last"
        if tuple(layer.dilation_rate) != (1, 1):
            return None, ("dilation_rate other than 1: TFLite's TRANSPOSE_CONV has no "
                          "dilation; use dilation_rate=1")
        if _activation_name(layer) is None:
            return None, (f"activation '{getattr(layer.activation, '__name__', '?')}' is not "
                          "supported: use relu / relu6 (or softmax / sigmoid / tanh at the end)")
        return "tconv", None
    if _is_model(layer):
        if isinstance(layer, keras.Sequential) or type(layer).__name__ == "Functional":
            return "model", None
        return None, ("a subclassed model inside the graph cannot be rewritten: build it as "
                      "a functional model")
    if cls in (L.Conv2D, L.DepthwiseConv2D, L.Dense):
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            return None, "data_format='channels_first': TFLite is channels-last"
        if cls is L.Conv2D and layer.groups != 1:
            return None, "grouped convolution (groups>1) has no int8 TFLite kernel"
        if _activation_name(layer) is None:
            return None, (f"activation '{getattr(layer.activation, '__name__', '?')}' is not "
                          "supported: use relu / relu6 (or softmax / sigmoid / tanh at the end)")
        return "conv", None
    if cls is L.BatchNormalization:
        if layer.axis not in (-1, [-1]) and not (
                isinstance(layer.axis, (list, tuple)) and len(layer.axis) == 1):
            return None, "BatchNormalization over several axes: normalize the channel axis only"
        return "bn", None
    if cls is L.ReLU:
        if _relu_kind(layer) is None:
            return None, "ReLU with negative_slope / threshold / max_value other than 6: use ReLU or ReLU6"
        return "activation", None
    if cls is L.Activation:
        if _activation_name(layer) is None:
            return None, (f"activation '{getattr(layer.activation, '__name__', '?')}' is not "
                          "supported: use relu / relu6 (or softmax / sigmoid / tanh at the end)")
        return "activation", None
    if cls is L.Softmax:
        if layer.axis not in (-1, [-1]):
            return None, "Softmax over an axis other than the last: TFLite's is 1-D"
        return "activation", None
    if cls is L.Add:
        return "add", None
    if cls is L.Multiply:
        return "mul", None
    if cls is L.Concatenate:
        return "concat", None
    if cls is L.AveragePooling2D:
        return "avgpool", None
    if cls is L.GlobalAveragePooling2D:
        return "gap", None
    if cls is L.Resizing:
        if layer.crop_to_aspect_ratio or getattr(layer, "pad_to_aspect_ratio", False):
            return None, "Resizing with crop/pad_to_aspect_ratio: resize without them"
        if layer.interpolation == "bilinear":
            return "resize", None
        if layer.interpolation == "nearest":
            return "keep", None
        return None, f"interpolation='{layer.interpolation}': use 'bilinear' or 'nearest'"
    if cls is L.UpSampling2D:
        if layer.interpolation == "bilinear":
            if getattr(layer, "data_format", "channels_last") != "channels_last":
                return None, "data_format='channels_first': TFLite is channels-last"
            return "resize", None
        return None, _FIXES["UpSampling2D"]
    if cls in (L.Rescaling, L.Normalization):
        return "affine", None
    if cls in _PASSTHROUGH:
        return "keep", None
    return None, _unsupported_fix(layer)


# --------------------------------------------------------------------------- the plan

def _plan(graph, inputs_quantized):
    """Per layer: kind, quantize_output / quantize_inputs, folded BN; raises on unsupported."""
    plan, problems = {}, []
    for name in graph.order:
        layer = graph.layer(name)
        kind, fix = _classify(layer)
        if kind is None:
            problems.append((name, type(layer).__name__, fix))
        plan[name] = {"kind": kind}
    if problems:
        raise UnsupportedLayerError(problems)

    # BatchNormalization folds into the conv / Dense feeding it, if that conv feeds only it
    # and applies no activation of its own.
    for name in graph.order:
        if plan[name]["kind"] != "bn":
            continue
        producer = graph.sole_producer(name)
        if (producer is not None and plan[producer]["kind"] in ("conv", "tconv")
                and graph.sole_consumer(producer) == name
                and len(graph.inbound[producer]) == 1
                and _activation_name(graph.layer(producer)) == "linear"):
            plan[producer]["fold"] = name
            plan[name]["kind"] = "folded_bn"
            # TFLite fuses no activation into TRANSPOSE_CONV, so neither does its folded BN.
            plan[name]["fuses_relu"] = plan[producer]["kind"] == "conv"
        else:
            plan[name]["kind"] = "affine"

    def act_kind(name):
        layer = graph.layer(name)
        if _registered_activation(layer):
            return _registered_activation(layer)
        if isinstance(layer, keras.layers.ReLU):
            return _relu_kind(layer)
        if isinstance(layer, keras.layers.Softmax):
            return "softmax"
        return _activation_name(layer)

    fusing = ("conv", "add", "mul", "folded_bn", "affine")
    owners = ("concat", "avgpool", "resize")
    # A transposed conv fuses no activation (TF 2.21's converter emits a RELU op after
    # TRANSPOSE_CONV), but it fuses a folded BN and leaves its range to owners like a conv.
    quantizing = fusing + ("tconv", "activation", "gap", "input")
    for name in graph.order:
        entry = plan[name]
        kind = entry["kind"]
        if kind not in quantizing:
            continue
        if kind == "input" and inputs_quantized:
            entry["quantize_output"] = False
            continue
        consumer = graph.sole_consumer(name)
        quantize = True
        if consumer is not None and len(graph.inbound[name]) <= 1:
            ckind = plan[consumer]["kind"]
            if kind in ("conv", "tconv") and ckind == "folded_bn":
                quantize = False
            elif (kind in fusing and ckind == "activation" and entry.get("fuses_relu", True)
                  and act_kind(consumer) in _RELU_LIKE):
                quantize = False
            elif ckind in owners:
                quantize = False
        if (kind in ("conv", "tconv")
                and _activation_name(graph.layer(name)) not in ("linear",) + _RELU_LIKE):
            quantize = True  # softmax / sigmoid / tanh heads quantize their logits themselves
        entry["quantize_output"] = quantize
    for name in graph.order:
        entry = plan[name]
        if entry["kind"] in ("avgpool", "resize"):
            producer = graph.sole_producer(name)
            entry["quantize_inputs"] = bool(
                producer is not None and plan[producer]["kind"] in quantizing
                and plan[producer].get("quantize_output") is False)
    _plan_shared_ranges(graph, plan, act_kind)
    _plan_relu_after_transpose(graph, plan, act_kind)
    _plan_bias_grids(graph, plan)
    return plan


def _plan_relu_after_transpose(graph, plan, act_kind):
    """A ReLU / ReLU6 layer after a transposed conv (or its folded BN) shares its range.

    TFLite runs that ReLU as an op of its own (no fusion into TRANSPOSE_CONV), with an int8
    input and output. On one scale the int8 RELU only clamps, which fake-quant reproduces
    exactly; on two it requantizes, with the kernel's rounding. So the pair quantizes with
    one range, the union of what both observe: the pre-activation range, since the ReLU's
    output lies within it. Pairs already in a Concatenate's group keep that group's range.
    """
    for name in graph.order:
        entry = plan[name]
        if (entry["kind"] != "activation" or act_kind(name) not in _RELU_LIKE
                or not entry.get("quantize_output") or entry.get("shared_range")
                or len(graph.inbound[name]) != 1):
            continue
        producer = graph.sole_producer(name)
        if producer is None or graph.sole_consumer(producer) != name:
            continue
        pentry = plan[producer]
        transposed = (pentry["kind"] == "tconv"
                      or (pentry["kind"] == "folded_bn" and not pentry.get("fuses_relu")))
        if not transposed or not pentry.get("quantize_output") or pentry.get("shared_range"):
            continue
        pentry["shared_range"] = True
        entry["shared_range"] = True
        entry["range_peers"] = [producer]  # the ReLU runs last: it joins the two ranges


def _grid_owner(graph, plan, name):
    """The layer whose fake-quant puts `name`'s output on its int8 grid, or None.

    Same-scale ops without a range of their own (Identity, MaxPool, a float-running resize,
    ...) keep their input's scale in TFLite, so the walk goes on to their producer.
    """
    while True:
        entry = plan[name]
        kind = entry["kind"]
        if kind == "input":
            return f"{name}_quant" if entry.get("quantize_output") else None
        if kind == "concat":
            return name
        if kind in ("resize", "avgpool") and (entry.get("quantize_inputs")
                                              or entry.get("shared_range")):
            return name
        if kind in ("keep", "resize", "avgpool"):
            name = graph.sole_producer(name)
            if name is None:
                return None
            continue
        if kind in ("conv", "tconv", "folded_bn", "activation", "affine", "add", "mul", "gap"):
            return name if entry.get("quantize_output") else None
        return None


def _plan_bias_grids(graph, plan):
    """Biased layers (conv, Dense, affine) learn which layer sets their input's scale.

    TFLite stores a bias in int32 at input scale x weight scale; the QAT layer rounds its
    bias to that grid (`QuantizerMixin._quantize_bias`), which needs the input's scale.
    A layer called more than once, or fed by a layer with no int8 grid, keeps a float bias.
    """
    for name in graph.order:
        entry = plan[name]
        if entry["kind"] not in ("conv", "tconv", "affine") or len(graph.inbound[name]) != 1:
            continue
        producer = graph.sole_producer(name)
        owner = None if producer is None else _grid_owner(graph, plan, producer)
        if owner is not None:
            entry["input_quantizer"] = owner


def _plan_shared_ranges(graph, plan, act_kind):
    """Groups of tensors TFLite must give one scale, each quantized with one shared range.

    int8 CONCATENATION needs every input on the output's scale, and RESIZE_BILINEAR /
    AVERAGE_POOL_2D / MAX_POOL_2D / RESHAPE ... keep their input's. A tensor that reaches a
    Concatenate through such ops, or that also feeds another layer, therefore carries its own
    fake-quant, and TF 2.21's converter refuses two ranges there ("quantization parameters
    violate the same scale constraint") instead of requantizing. Walking back from each
    Concatenate through same-scale ops to the layers that quantize gives the group; every
    layer of it quantizes with one range, the union of what each observes (TFLite's rule).
    Groups where a single layer owns the only range (a Concatenate of sole-consumer convs, a
    Resizing after a conv) need nothing and are left as they were.
    """
    parent = {}

    def find(n):
        parent.setdefault(n, n)
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    def union(a, b):
        parent[find(a)] = find(b)

    same_scale = ("keep", "resize", "avgpool", "concat")
    for name in graph.order:
        if plan[name]["kind"] != "concat" or len(graph.inbound[name]) != 1:
            continue
        stack = list(graph.inbound[name][0])
        while stack:
            p = stack.pop()
            if find(p) == find(name):
                continue
            union(p, name)
            if plan[p]["kind"] in ("keep", "resize", "avgpool"):
                q = graph.sole_producer(p)
                if q is not None:
                    stack.append(q)
    groups = {}
    for n in parent:
        groups.setdefault(find(n), []).append(n)
    for members in groups.values():
        members = sorted(members, key=graph.order.index)

        def fixed(n):
            entry, layer = plan[n], graph.layer(n)
            if entry["kind"] in ("conv", "tconv"):
                return _activation_name(layer) not in ("linear",) + _RELU_LIKE
            return entry["kind"] == "activation" and act_kind(n) not in ("linear",) + _RELU_LIKE

        ranged = [n for n in members
                  if not fixed(n) and (plan[n]["kind"] in same_scale
                                       or plan[n].get("quantize_output"))]
        # A "keep" layer has no quantizer; an input quantizes through its QuantizeInput.
        ranged = [n for n in ranged if plan[n]["kind"] != "keep"]
        if len(ranged) < 2:
            continue
        for n in ranged:
            plan[n]["shared_range"] = True
        owner = ranged[-1]  # last in the graph: every member has run when it joins them
        plan[owner]["range_peers"] = [
            f"{n}_quant" if plan[n]["kind"] == "input" else n for n in ranged[:-1]]


# --------------------------------------------------------------------------- layer building

def _channels(layer):
    return int(layer.input.shape[-1])


def _affine_params(layer):
    """(scale, offset) of a per-channel affine layer at inference, measured, not derived.

    Rescaling, Normalization and a frozen BatchNormalization are all `x * a + b` per channel;
    feeding 0 and 1 reads `b` and `a + b` exactly, whatever the layer's parametrization.
    """
    c = _channels(layer)
    zeros = np.zeros((1, 1, 1, c), "float32")
    ones = np.ones((1, 1, 1, c), "float32")
    b = keras.ops.convert_to_numpy(layer(zeros, training=False)).reshape(-1)
    a = keras.ops.convert_to_numpy(layer(ones, training=False)).reshape(-1) - b
    return a.astype("float32"), b.astype("float32")


def _bn_factors(bn):
    """BatchNormalization at inference as per-channel (a, b): y = a * x + b."""
    gamma = keras.ops.convert_to_numpy(bn.gamma) if bn.scale else 1.0
    beta = keras.ops.convert_to_numpy(bn.beta) if bn.center else 0.0
    mean = keras.ops.convert_to_numpy(bn.moving_mean)
    var = keras.ops.convert_to_numpy(bn.moving_variance)
    a = gamma / np.sqrt(var + bn.epsilon)
    return a.astype("float32"), (beta - mean * a).astype("float32")


def _quant_kwargs(entry, ema_decay):
    kwargs = {"quantize_output": entry.get("quantize_output", True), "ema_decay": ema_decay,
              **_shared_kwargs(entry)}
    if entry.get("input_quantizer"):
        kwargs["input_quantizer"] = entry["input_quantizer"]
    return kwargs


def _shared_kwargs(entry):
    if not entry.get("shared_range"):
        return {}
    return {"shared_range": True, "range_peers": entry.get("range_peers")}


def _build_layer(layer, entry, ema_decay, graph):
    kind = entry["kind"]
    name = layer.name
    if kind == "keep":
        return layer.__class__.from_config(layer.get_config())
    if kind == "model":
        return _rewrite(_as_functional(layer), ema_decay, inputs_quantized=True)
    if kind in ("conv", "tconv"):
        config = layer.get_config()
        config.pop("quantization_config", None)
        if entry.get("fold"):
            config["use_bias"] = True
        cls = {keras.layers.Conv2D: qlayers.QuantizedConv2D,
               keras.layers.Conv2DTranspose: qlayers.QuantizedConv2DTranspose,
               keras.layers.DepthwiseConv2D: qlayers.QuantizedDepthwiseConv2D,
               keras.layers.Dense: qlayers.QuantizedDense}[type(layer)]
        return cls.from_config({**config, **_quant_kwargs(entry, ema_decay)})
    if kind == "folded_bn":
        return qlayers.QuantizedActivation("linear", name=name, **_quant_kwargs(entry, ema_decay))
    if kind == "activation":
        if isinstance(layer, keras.layers.ReLU):
            act = _relu_kind(layer)
        elif isinstance(layer, keras.layers.Softmax):
            act = "softmax"
        else:
            act = _registered_activation(layer) or _activation_name(layer)
        return qlayers.QuantizedActivation(act, name=name, **_quant_kwargs(entry, ema_decay))
    if kind == "affine":
        return qlayers.QuantizedChannelAffine(_channels(layer), name=name,
                                              **_quant_kwargs(entry, ema_decay))
    if kind == "add":
        return qlayers.QuantizedAdd(name=name, **_quant_kwargs(entry, ema_decay))
    if kind == "mul":
        return qlayers.QuantizedMultiply(name=name, **_quant_kwargs(entry, ema_decay))
    if kind == "concat":
        return qlayers.QuantizedConcatenate(axis=layer.axis, name=name, ema_decay=ema_decay,
                                            **_shared_kwargs(entry))
    if kind in ("avgpool", "resize", "gap"):
        cls = {"avgpool": qlayers.QuantizedAveragePooling2D,
               "resize": qlayers.QuantizedResizing,
               "gap": qlayers.QuantizedGlobalAveragePooling2D}[kind]
        if isinstance(layer, keras.layers.UpSampling2D):
            cls = qlayers.QuantizedUpSampling2D
        config = layer.get_config()
        extra = {"ema_decay": ema_decay, **_shared_kwargs(entry)}
        if kind == "gap":
            extra["quantize_output"] = entry.get("quantize_output", True)
        else:
            extra["quantize_inputs"] = entry.get("quantize_inputs", False)
        if kind == "avgpool":
            # Exact average inside the graph (unbiased vs the int8 kernel's tie rounding);
            # rounded where it is a model output, since that is what gets compared.
            extra["snap_output"] = name in graph.outputs
        return cls.from_config({**config, **extra})
    raise AssertionError(f"no rule for kind {kind!r}")  # _classify and _plan disagree


def _copy_weights(old, new, entry, graph):
    kind = entry["kind"]
    if kind in ("conv", "tconv"):
        kernel = keras.ops.convert_to_numpy(old.kernel)
        bias = (keras.ops.convert_to_numpy(old.bias) if old.use_bias
                else np.zeros(new.bias.shape if new.use_bias else (0,), "float32"))
        if entry.get("fold"):
            a, b = _bn_factors(graph.layer(entry["fold"]))
            if isinstance(old, keras.layers.DepthwiseConv2D):
                kernel = kernel * a.reshape(kernel.shape[2], kernel.shape[3])
            elif kind == "tconv":
                kernel = kernel * a.reshape(1, 1, -1, 1)  # (h, w, out, in): out is axis 2
            else:
                kernel = kernel * a
            bias = bias * a + b
        new.kernel.assign(kernel)
        if new.use_bias:
            new.bias.assign(bias)
    elif kind == "affine":
        a, b = _affine_params(old)
        new.scale.assign(a)
        new.offset.assign(b)
    elif kind == "keep" and old.weights:
        new.set_weights(old.get_weights())


# --------------------------------------------------------------------------- the rewrite

def _as_functional(model):
    if isinstance(model, keras.Sequential):
        if not model.built or not model.inputs:
            raise ValueError(
                f"Sequential model '{model.name}' has no defined input: start it with "
                "keras.Input(shape=...) (or build it) before quantize_model.")
        return keras.Model(model.inputs, model.outputs, name=model.name)
    if not _compat.is_functional(model) or not _serializes_layers(model):
        raise TypeError(
            f"quantize_model rewrites functional or Sequential Keras models; got "
            f"{type(model).__name__} '{getattr(model, 'name', '?')}'. For a subclassed model, "
            "quantize its functional parts (e.g. `distiller.student`), or rebuild it with the "
            "functional API.")
    return model


def _serializes_layers(model):
    """The graph is read from get_config(): a subclass of a functional model must still list
    its layers there (one with its own constructor and get_config may not)."""
    try:
        return model.get_config().get("layers") is not None
    except NotImplementedError:
        return False


def _rewrite(model, ema_decay, inputs_quantized, input_range=None):
    graph = _Graph(model)
    plan = _plan(graph, inputs_quantized)
    built = {}

    def clone_function(layer):
        new = _build_layer(layer, plan[layer.name], ema_decay, graph)
        built[layer.name] = new
        return new

    new_inputs = [keras.Input(batch_shape=t.shape, dtype=t.dtype, name=name)
                  for t, name in zip(model.inputs, _input_layer_names(model))]
    quantized_inputs = {}
    for t, name in zip(new_inputs, _input_layer_names(model)):
        if plan[name].get("quantize_output", False):
            quantized_inputs[id(t)] = qlayers.QuantizeInput(
                name=f"{name}_quant", ema_decay=ema_decay,
                fixed_range=input_range, **_shared_kwargs(plan[name]))(t)

    def call_function(layer, *args, **kwargs):
        args, kwargs = keras.tree.map_structure(
            lambda t: quantized_inputs.get(id(t), t), (args, kwargs))
        if kwargs.get("mask", 0) is None:
            # Recorded for merge layers that support masking; int8 graphs carry no masks.
            kwargs.pop("mask")
        return layer(*args, **kwargs)

    new_model = keras.models.clone_model(
        model, input_tensors=keras.tree.pack_sequence_as(model.input, new_inputs),
        clone_function=clone_function,
        call_function=call_function)
    for name, new in built.items():
        _copy_weights(graph.layer(name), new, plan[name], graph)
    return qlayers.link_shared_ranges(new_model)


def _input_layer_names(model):
    config = model.get_config()
    return _flatten_history_list(config["input_layers"])


def quantize_model(model, calibration_data=None, calibration_steps=8, fold_bn=True,
                   ema_decay=0.999, input_range=None):
    """Rewrite a float functional / Sequential Keras 3 model for quantization-aware training.

    The returned model is a new functional model (the input is left untouched) in which
    weights are fake-quantized per channel (per tensor for Dense), symmetric, narrow range,
    and activations per tensor, asymmetric, with moving-average ranges that training updates
    and inference uses frozen. BatchNormalization is folded into the conv before it with its
    current moving statistics, ReLU/ReLU6 are fused, and every layer keeps its name.
    `tf.lite.TFLiteConverter.from_keras_model(qat)` with `optimizations=[DEFAULT]` (or
    `tfkd.tflite.convert(qat, path, quantization="qat")`) then gives a fully int8 graph whose
    outputs match the Keras model's to a fraction of an LSB, with no representative data set.

    Args:
        model: a built functional or Sequential `keras.Model`. Nested functional / Sequential
            sub-models are rewritten too.
        calibration_data: optional inputs to initialize every activation range from before
            training (numpy array, `tf.data.Dataset` of `x` or `(x, y[, w])`, or an iterable
            of batches). Without it, the first training batch sets the ranges.
        calibration_steps: number of batches of `calibration_data` to average ranges over.
        fold_bn: only `True` (fold with frozen statistics) is implemented; the ranges and
            weights of a folded model train like any QAT model.
        ema_decay: decay of the moving-average activation ranges during training.
        input_range: a fixed (low, high) range of the model inputs instead of a learned one,
            e.g. (0, 255) for pixels: the int8 file then reads uint8 pixels at scale 1
            whatever range the calibration images span, as MediaPipe, which feeds raw
            pixels, needs (ORL's faces stop at ~240: a learned range gave scale 0.95).

    Returns:
        A new functional `keras.Model` made of `tfkd.quantization` layers (registered as
        serializable, so `model.save` / `keras.saving.load_model` round-trip, ranges included).

    Raises:
        UnsupportedLayerError: listing every layer that has no int8 rewrite, each with a fix.

    Example:

    ```python
    import numpy as np, keras
    from tfkd.quantization import quantize_model

    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Conv2D(8, 3, use_bias=False, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(6.0, name="relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(10, name="logits")(x)
    student = keras.Model(inputs, outputs)

    images = np.random.rand(64, 28, 28, 1).astype("float32")
    qat = quantize_model(student, calibration_data=images, calibration_steps=2)
    qat.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qat.fit(images, np.zeros(64, "int32"), epochs=1, verbose=0)
    assert {"conv", "bn", "relu", "gap", "logits"} <= {l.name for l in qat.layers}
    ```
    """
    if fold_bn is not True:
        raise NotImplementedError(
            f"fold_bn={fold_bn!r}: only fold_bn=True (fold BatchNormalization with its frozen "
            "moving statistics) is implemented. Train the float model with BatchNormalization "
            "first, then quantize; QAT then fine-tunes the folded weights.")
    if not 0.0 <= float(ema_decay) < 1.0:
        raise ValueError(f"ema_decay={ema_decay}: a moving-average decay must be in [0, 1).")
    if not isinstance(model, keras.Model):
        raise TypeError(f"quantize_model expects a keras.Model, got {type(model).__name__}.")
    qat = _rewrite(_as_functional(model), float(ema_decay), inputs_quantized=False,
                   input_range=None if input_range is None else tuple(input_range))
    if calibration_data is not None:
        from tfkd.quantization.calibration import calibrate
        calibrate(qat, calibration_data, steps=calibration_steps)
    return qat
