import logging
import os

import numpy as np
import pytest

# Every pass pipeline checks its passes' invariants (requires/ensures) in the tests.
os.environ.setdefault("ONNX_RMPE_CHECK", "1")


@pytest.fixture(autouse=True)
def _quiet_logs(caplog):
    caplog.set_level(logging.INFO, logger="onnx_rmpe")


@pytest.fixture(scope="session")
def digits_data():
    from tests.helpers import digits
    return digits()


@pytest.fixture
def rng():
    return np.random.default_rng(0)
