"""Tap models: one forward pass that returns a model's outputs and named intermediate features.

A tap model shares every layer (and so every weight) with the model it taps; nothing is
copied. Features are found by layer name, also inside nested functional models (a backbone
inside a classifier): `"conv4_block6_out"` searches every level, `"backbone/conv4_block6_out"`
names the path. Nested models that hold a requested layer are inlined so that the feature is
connected to the outer inputs.
"""
import difflib

import keras

from tfkd import _compat
from tfkd.knowledge.base import View


def is_graph_model(model):
    """True for Functional and Sequential models, whose layers can be reached from outside."""
    return _compat.is_functional(model) or isinstance(model, keras.Sequential)


def _walk(model, prefix=""):
    """Yields (path, layer) for every layer at every level of nesting."""
    for layer in model.layers:
        path = f"{prefix}{layer.name}"
        yield path, layer
        if is_graph_model(layer):
            yield from _walk(layer, prefix=f"{path}/")


def find_layer(model, name, side="model"):
    """Returns the layer `name` (a layer name or a `nested/.../layer` path) of `model`."""
    paths = dict(_walk(model))
    if name in paths:
        return paths[name]
    matches = [(p, l) for p, l in paths.items() if p.rsplit("/", 1)[-1] == name]
    if len(matches) == 1:
        return matches[0][1]
    if len(matches) > 1:
        raise ValueError(
            f"Layer name {name!r} is ambiguous in the {side} `{model.name}`: it exists at "
            f"{[p for p, _ in matches]}. Use the full path, e.g. {matches[0][0]!r}."
        )
    candidates = sorted(set(paths) | {p.rsplit("/", 1)[-1] for p in paths})
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.5)
    hint = f" Close matches: {close}." if close else ""
    raise ValueError(
        f"No layer named {name!r} in the {side} `{model.name}`.{hint} "
        f"Use `{side}.summary()` (and `expand_nested=True`) to list the layer names; nested "
        f"layers may be written as 'outer/inner'."
    )


def _inline(model, inputs, call_fn):
    """Re-runs a graph model's layers on `inputs` through `call_fn`, sharing every layer."""
    if isinstance(model, keras.Sequential):
        out = inputs
        for layer in model.layers:
            out = call_fn(layer, out)
        return out
    # Not clone_model: its rebuild fails with "not connected to inputs" when `inputs` are
    # not keras.Input tensors (a nested model called on the output of a front end).
    return _compat.run_through_graph(model, inputs, call_fn)


def _contains(model, targets):
    return any(layer in targets for _, layer in _walk(model))


class Tap:
    """Runs `model` once and returns a `View` of its outputs and the requested features."""

    def __init__(self, model, feature_names=(), side="model"):
        self.model = model
        self.side = side
        self.feature_names = tuple(dict.fromkeys(feature_names))
        self._graph = None
        self._structure = None
        if self.feature_names:
            self._graph = self._build_graph()

    def _build_graph(self):
        model = self.model
        if not is_graph_model(model):
            raise ValueError(
                f"Knowledge terms ask for features {list(self.feature_names)} of the {self.side} "
                f"`{model.name}`, a subclassed `{type(model).__name__}`: its layers are hidden "
                "inside its `call()` and cannot be tapped. Build it with the functional API "
                "(keras.Model(inputs, outputs)) or Sequential, or make `call()` return the "
                "features as extra outputs and pick them with the term's `output=` argument."
            )
        targets = {}
        for name in self.feature_names:
            targets.setdefault(find_layer(model, name, self.side), []).append(name)
        captured = {}

        def call_fn(layer, *args, **kwargs):
            if is_graph_model(layer) and _contains(layer, targets):
                # Inline the nested model so its inner features connect to the outer inputs.
                out = _inline(layer, args[0] if len(args) == 1 else list(args), call_fn)
            else:
                out = layer(*args, **kwargs)
            for name in targets.get(layer, ()):
                if name in captured:
                    raise ValueError(
                        f"Layer {name!r} of the {self.side} is called more than once (a shared "
                        "layer), so its feature is ambiguous. Tap a layer that runs once."
                    )
                captured[name] = out
            return out

        # The model's own input structure (a tensor, a list or a dict keyed like the data)
        # with the same names, so the tap takes exactly what the model takes.
        try:
            structure = model.input
        except (AttributeError, ValueError):  # a Sequential that was built, never called
            structure = model_input_spec(model, self.side)
        inputs = keras.tree.map_structure(
            lambda t: keras.Input(batch_shape=t.shape, dtype=t.dtype, name=t.name), structure
        )
        output = _inline(model, inputs, call_fn)
        flat_outputs = keras.tree.flatten(output)
        self._structure = output
        self._num_outputs = len(flat_outputs)
        features = [captured[name] for name in self.feature_names]
        return keras.Model(inputs, flat_outputs + features, name=f"{model.name}_tap")

    def __call__(self, x, training=False):
        if self._graph is None:
            return View(self.model(x, training=training))
        flat = self._graph(x, training=training)
        if not isinstance(flat, (list, tuple)):
            flat = [flat]
        outputs = keras.tree.pack_sequence_as(self._structure, list(flat[: self._num_outputs]))
        features = dict(zip(self.feature_names, flat[self._num_outputs:]))
        return View(outputs, features)

    def symbolic_view(self, input_spec=None):
        """Returns a View of KerasTensors, for shape checks before any data is seen."""
        if self._graph is not None:
            return self(self._graph.inputs[0] if len(self._graph.inputs) == 1
                        else self._graph.inputs)
        if input_spec is None:
            input_spec = model_input_spec(self.model, self.side)
        return View(self.model.compute_output_spec(input_spec))


def model_input_spec(model, side="model"):
    """Symbolic inputs of a model; raises a clear error for a subclassed model never built."""
    if getattr(model, "inputs", None):
        inputs = model.inputs
        return inputs[0] if len(inputs) == 1 else inputs
    # `get_build_config()` holds the shape `build()` was called with (one input: "input_shape").
    config = (model.get_build_config() if model.built else None) or {}
    if config.get("input_shape") is not None:
        return keras.KerasTensor(config["input_shape"], dtype=model.input_dtype)
    raise ValueError(
        f"The {side} `{model.name}` is not built, so its input and output shapes are unknown. "
        f"Build it first: call it once on a batch (`{side}(x[:1])`) or call "
        f"`{side}.build(input_shape)`; a {side} loaded from a .keras file is already built."
    )
