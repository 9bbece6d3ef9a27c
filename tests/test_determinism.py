"""Two conversions of the same model with the same options write identical bytes.

The restructuring proof (``benchmarks/byte_identity.py``) compares hashes across code
versions; it relies on a conversion being a deterministic function of its inputs, which
this test checks on a small CNN with a MaxPool (RMPE on, streaming form, --save-qcfs).
"""

from __future__ import annotations

import hashlib

import pytest

from onnx_rmpe.conversion import convert
from tests.helpers import export_torch


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def cnn(digits_data):
    import torch

    from tests.test_streaming import _cnn
    torch.manual_seed(0)
    (x, _), _ = digits_data
    return export_torch(_cnn().eval(), x)


@pytest.mark.parametrize("mode", ["multistep", "streaming", "unrolled"])
def test_same_inputs_same_bytes(cnn, digits_data, tmp_path, mode):
    (x, _), _ = digits_data
    digests = []
    for run in ("a", "b"):
        out, qcfs = tmp_path / f"{run}.snn.onnx", tmp_path / f"{run}.qcfs.onnx"
        convert(cnn, T=4, calib=x[:48], calib_samples=None, batch_size=16, threads=1,
                mode=mode, output=out, save_qcfs=qcfs)
        digests.append((_digest(out), _digest(qcfs)))
    assert digests[0] == digests[1]
    other = tmp_path / "T2.snn.onnx"  # the comparison can fail: another T, other bytes
    convert(cnn, T=2, calib=x[:48], calib_samples=None, batch_size=16, threads=1, mode=mode,
            output=other)
    assert _digest(other) != digests[0][0]
