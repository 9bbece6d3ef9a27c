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


@pytest.fixture(scope="session")
def digits_relu_cnn(digits_data):
    """A small fully trained ReLU CNN on digits (Conv-BN-ReLU, AvgPool, MLP; ReLU accuracy
    measured 0.98), as ONNX; shared by the fine-tuning tests. Leaves torch on one thread
    (training and the teacher session: one thread each)."""
    import torch

    from tests.helpers import export_torch, train
    (x, y), _ = digits_data
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.AvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(8 * 16, 32), torch.nn.ReLU(),
        torch.nn.Linear(32, 10))
    return export_torch(train(net, x, y, epochs=15), x)
