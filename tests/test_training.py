"""`tfkd.training.Trainer`: the docstring examples of the one step run as written, and each
trainer reports what its `declare` promised."""
import re
import textwrap

import pytest

import tfkd
from tfkd.training import Trainer


def run_example(doc):
    """Runs the ```python block of a docstring; returns (value of the last line, its
    `# comment`)."""
    code = textwrap.dedent(re.search(r"```python\n(.*?)```", doc, re.S).group(1)).rstrip()
    *body, last = code.splitlines()
    expression, _, expected = last.partition("#")
    scope = {}
    exec("\n".join(body), scope)  # noqa: S102 - our own docstring
    return eval(expression, scope), expected.strip()  # noqa: S307


@pytest.mark.parametrize("cls", [Trainer, tfkd.Distiller], ids=lambda c: c.__name__)
def test_docstring_example_runs(cls):
    value, expected = run_example(cls.__doc__)
    names = re.findall(r"[a-z_]+", expected)
    assert value == sorted(names), (value, expected)


def test_undeclared_loss_is_refused():
    import keras
    import numpy as np
    from tfkd.training import Step

    class Sloppy(Trainer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.net = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
            self.declare(["fit_loss"])

        def call(self, x, training=False):
            return self.net(x)

        def learn(self, x, y, sample_weight, teaching, training):
            return Step({"typo_loss": keras.ops.mean(self.net(x) ** 2)})

    model = Sloppy()
    model.compile("sgd")
    with pytest.raises(KeyError, match="'typo_loss'.*not declared.*fit_loss"):
        model.fit(np.ones((4, 2)), epochs=1, verbose=0)
