"""The issue's independent stage-1 recipe, written plainly in torch (no onnx-rmpe training code).

Bu et al. 2022 QCFS (clip, then floor with a straight-through gradient), thresholds
initialised to the 99.9th percentile of each ReLU input's positive values on 1024 training
images, SGD momentum 0.9, lr 0.01 cosine-decayed per step to 0, batch 128, cross-entropy,
no weight decay. Only the export of the trained net to an ``onnx_rmpe::QCFS`` graph uses
the package (:class:`onnx_rmpe.torch.QCFS` as an export vehicle) so that the same
``convert`` turns both recipes into SNNs. Handles the plain Conv/Relu/AveragePool/
Flatten/Gemm chains of ``benchmarks/fashion_nets.py`` (BN already folded by the export).
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from onnx_rmpe.torch.export import export
from onnx_rmpe.torch.qcfs import QCFS


class RefQCFS(nn.Module):
    def __init__(self, lam: float, levels: int) -> None:
        super().__init__()
        self.lam, self.levels = nn.Parameter(torch.tensor(float(lam))), levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = torch.clamp(x / self.lam, 0, 1)
        return (u + (torch.floor(u * self.levels + 0.5) / self.levels - u).detach()) * self.lam


def torch_net(model: onnx.ModelProto) -> nn.Sequential:
    """The ONNX chain as an nn.Sequential (ReLU kept as nn.ReLU)."""
    w = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in model.graph.initializer}
    layers: list[nn.Module] = []
    for n in model.graph.node:
        a = {x.name: onnx.helper.get_attribute_value(x) for x in n.attribute}
        if n.op_type == "Conv":
            k = w[n.input[1]]
            conv = nn.Conv2d(k.shape[1], k.shape[0], k.shape[2:], stride=a.get("strides", [1])[0],
                             padding=a.get("pads", [0])[0])
            conv.weight.data, conv.bias.data = k, w[n.input[2]]
            layers.append(conv)
        elif n.op_type == "Gemm":
            k = w[n.input[1]]
            fc = nn.Linear(k.shape[1], k.shape[0])
            fc.weight.data, fc.bias.data = k, w[n.input[2]]
            layers.append(fc)
        elif n.op_type == "AveragePool":
            layers.append(nn.AvgPool2d(a["kernel_shape"], a.get("strides")))
        else:
            layers.append({"Relu": nn.ReLU, "Flatten": nn.Flatten}[n.op_type]())
    return nn.Sequential(*layers)


def reference_finetune(relu: onnx.ModelProto, x: np.ndarray, y: np.ndarray, *, levels: int,
                       epochs: int, seed: int = 0) -> onnx.ModelProto:
    """Fine-tune the QCFS version of ``relu`` on ``(x, y)``; returns the QCFS ONNX model."""
    torch.manual_seed(seed)
    net, calib = torch_net(relu), torch.from_numpy(x[:1024])
    for i, layer in enumerate(net):
        if isinstance(layer, nn.ReLU):
            with torch.no_grad():
                z = net[:i](calib)
            net[i] = RefQCFS(float(torch.quantile(z[z > 0][:10_000_000].double(), 0.999)), levels)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    steps = epochs * -(-len(x) // 128)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    X, Y = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    for _ in range(epochs):
        perm = torch.randperm(len(X))
        for i in range(0, len(X), 128):
            idx = perm[i:i + 128]
            opt.zero_grad()
            nn.functional.cross_entropy(net(X[idx]), Y[idx]).backward()
            opt.step()
            sched.step()
    for i, layer in enumerate(net):
        if isinstance(layer, RefQCFS):
            net[i] = QCFS(levels, float(layer.lam.detach().clamp(min=1e-4)))
    return export(net.eval(), torch.zeros(1, 1, 28, 28))
