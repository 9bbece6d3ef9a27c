import logging

import numpy as np
import pytest


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
