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


@pytest.fixture(scope="session")
def resnet(digits_data):
    """A ResNet-like digits net (identity and 1x1-conv shortcuts), trained 8 epochs, as ONNX;
    trained once per session for the RMPE, threshold and refinement tests."""
    import torch

    from tests.helpers import export_torch, train
    from tests.nets import ResNetLike
    (x, y), _ = digits_data
    torch.manual_seed(0)
    return export_torch(train(ResNetLike(), x, y, epochs=8), x)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
