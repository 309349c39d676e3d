"""Fixtures of the knowledge-term tests."""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(__file__))  # for `import kd_numpy` (NumPy references)

import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
