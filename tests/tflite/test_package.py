"""Package-level promises: import isolation, runnable docstring examples, bad models."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import doctest  # noqa: E402
import importlib  # noqa: E402

import pytest  # noqa: E402

import tfkd.tflite as tfl  # noqa: E402

MODULES = ["tfkd.tflite", "tfkd.tflite.convert", "tfkd.tflite.inspection",
           "tfkd.tflite.evaluate", "tfkd.tflite.parity", "tfkd.tflite.benchmark",
           "tfkd.tflite.edgetpu", "tfkd.tflite.metadata", "tfkd.tflite.metrics",
           "tfkd.tflite.clients", "tfkd.tflite.image_quality", "tfkd.tflite.verification",
           "tfkd.tflite.l2norm"]


def test_imports_nothing_of_the_distillation_side():
    # Static: `import tfkd.tflite` also runs tfkd/__init__.py, which is not this package's to
    # control, so check what tfkd.tflite's own modules import.
    import ast
    from pathlib import Path

    folder = Path(tfl.__file__).parent
    offenders = []
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [("." * node.level) + (node.module or "")]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if (name.startswith("tfkd.") and not name.startswith("tfkd.tflite")) or \
                        name == "tfkd" or (name.startswith("..") and name != ".."):
                    offenders.append(f"{path.name}: {name}")
    assert offenders == []


def test_modules_import_no_cycle():
    # Function-level imports count too: convert <-> metadata was one, hidden in a function.
    import ast
    from pathlib import Path

    folder = Path(tfl.__file__).parent
    graph = {}
    for path in folder.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps |= {node.module} if node.module else {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                    "tfkd.tflite."):
                deps.add(node.module.split(".")[2])
        graph[path.stem] = {d for d in deps if (folder / f"{d}.py").exists()}
    assert "metadata" in graph["convert"] and "convert" not in graph["metadata"]

    def reaches(start, target, seen=()):
        return any(d == target or (d not in seen and reaches(d, target, seen + (d,)))
                   for d in graph.get(start, ()))

    assert [m for m in sorted(graph) if reaches(m, m)] == []


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_model_without_inputs_is_a_clear_error(tmp_path):
    import keras

    model = keras.Sequential([keras.layers.Dense(2)])  # never built
    with pytest.raises(tfl.ConversionError, match="no defined inputs"):
        tfl.convert(model, tmp_path / "x.tflite")


def test_flex_ops_are_refused_unless_allowed(tmp_path):
    import keras
    import tensorflow as tf

    class CumProd(keras.layers.Layer):  # tf.math.cumprod has no TFLite builtin kernel
        def call(self, x):
            return tf.math.cumprod(x, axis=-1)

    inp = keras.Input((4,))
    model = keras.Model(inp, CumProd(name="cumprod")(inp))
    with pytest.raises(tfl.ConversionError, match="allow_flex=True"):
        tfl.convert(model, tmp_path / "x.tflite")
    assert not (tmp_path / "x.tflite").exists()
    # With Flex the file is written; this runtime cannot run it, but inspect reads the file.
    report = tfl.convert(model, tmp_path / "flex.tflite", allow_flex=True)
    assert report.op_counts == {"FlexCumprod": 1}
    assert tfl.inspect(tmp_path / "flex.tflite").op_counts == {"FlexCumprod": 1}
