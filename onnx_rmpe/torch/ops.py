"""Torch implementations of the ONNX ops the converter supports, for the interpreter.

Each handler takes the node's inputs (torch tensors, ``None`` for a missing optional
input) and its attributes (a dict; ``opset`` holds the model's default-domain opset) and
returns the output tensor(s). Semantics follow the ONNX operator specification at
inference time: Dropout is the identity and BatchNormalization uses its running statistics.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper

from onnx_rmpe.torch import spatial
from onnx_rmpe.torch.qcfs import qcfs
from onnx_rmpe.torch.surrogate import cumsum_op, if_op

Tensor = torch.Tensor
Handler = Callable[[list, dict], "Tensor | tuple[Tensor, ...]"]
HANDLERS: dict[str, Handler] = {}


def handles(*ops: str):
    def register(fn: Handler) -> Handler:
        for op in ops:
            HANDLERS[op] = fn
        return fn
    return register


def _ints(t: Tensor | None, default=None) -> list[int] | None:
    return default if t is None else [int(v) for v in t.reshape(-1).tolist()]


def _axes(inputs: list, attrs: dict, idx: int) -> list[int] | None:
    if len(inputs) > idx and inputs[idx] is not None:
        return _ints(inputs[idx])
    return attrs.get("axes")


@handles("Gemm")
def gemm(inputs, attrs):
    a, b = inputs[0], inputs[1]
    a = a.t() if attrs.get("transA", 0) else a
    b = b.t() if attrs.get("transB", 0) else b
    y = a @ b
    alpha = attrs.get("alpha", 1.0)
    y = y * alpha if alpha != 1.0 else y
    if len(inputs) > 2 and inputs[2] is not None:
        beta = attrs.get("beta", 1.0)
        y = y + (inputs[2] * beta if beta != 1.0 else inputs[2])
    return y


@handles("MatMul")
def matmul(inputs, attrs):
    return torch.matmul(inputs[0], inputs[1])


@handles("Add", "Sub", "Mul")
def arithmetic(inputs, attrs):
    a, b = inputs
    return {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul}[attrs["op"]](a, b)


@handles("Div")
def div(inputs, attrs):
    a, b = inputs
    if not a.is_floating_point() and not b.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")
    return a / b


@handles("Neg")
def neg(inputs, attrs):
    return -inputs[0]


@handles("Relu")
def relu(inputs, attrs):
    return torch.relu(inputs[0])


@handles("Clip")
def clip(inputs, attrs):
    x = inputs[0]
    low = inputs[1] if len(inputs) > 1 and inputs[1] is not None else attrs.get("min")
    high = inputs[2] if len(inputs) > 2 and inputs[2] is not None else attrs.get("max")
    low = low if low is None or not isinstance(low, Tensor) else low.to(x.dtype)
    high = high if high is None or not isinstance(high, Tensor) else high.to(x.dtype)
    return torch.clamp(x, low, high)


@handles("Max")
def maximum(inputs, attrs):
    out = inputs[0]
    for t in inputs[1:]:
        out = torch.maximum(out, t)
    return out


@handles("BatchNormalization")
def batch_norm(inputs, attrs):
    x, scale, bias, mean, var = inputs[:5]
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, attrs.get("epsilon", 1e-5))


@handles("Concat")
def concat(inputs, attrs):
    return torch.cat([t for t in inputs if t is not None], dim=attrs["axis"])


@handles("Flatten")
def flatten(inputs, attrs):
    x, axis = inputs[0], attrs.get("axis", 1)
    axis = axis + x.dim() if axis < 0 else axis
    lead = int(np.prod(x.shape[:axis], dtype=np.int64))
    return x.reshape(lead, -1)


@handles("Reshape")
def reshape(inputs, attrs):
    x, shape = inputs[0], _ints(inputs[1])
    if not attrs.get("allowzero", 0):
        shape = [x.shape[i] if v == 0 else v for i, v in enumerate(shape)]
    return x.reshape(shape)


@handles("Transpose")
def transpose(inputs, attrs):
    x = inputs[0]
    return x.permute(attrs.get("perm", list(reversed(range(x.dim())))))


@handles("Pad")
def pad(inputs, attrs):
    x = inputs[0]
    pads = _ints(inputs[1]) if len(inputs) > 1 else attrs["pads"]
    value = inputs[2] if len(inputs) > 2 and inputs[2] is not None else attrs.get("value", 0.0)
    value = float(value.reshape(()).item()) if isinstance(value, Tensor) else float(value)
    axes = _ints(inputs[3]) if len(inputs) > 3 and inputs[3] is not None else range(x.dim())
    axes = [a + x.dim() if a < 0 else a for a in axes]
    k = len(axes)
    full = [0] * (2 * x.dim())
    for j, a in enumerate(axes):
        full[a], full[a + x.dim()] = pads[j], pads[j + k]
    mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}[
        attrs.get("mode", "constant")]
    order = spatial.torch_pads(full, x.dim())
    if mode == "constant":
        return F.pad(x, order, value=value)
    return F.pad(x, order[:2 * (x.dim() - 2)], mode=mode)


@handles("Squeeze")
def squeeze(inputs, attrs):
    x, axes = inputs[0], _axes(inputs, attrs, 1)
    if axes is None:
        axes = [i for i, s in enumerate(x.shape) if s == 1]
    return x.squeeze(tuple(a % x.dim() for a in axes)) if axes else x


@handles("Unsqueeze")
def unsqueeze(inputs, attrs):
    x, axes = inputs[0], _axes(inputs, attrs, 1)
    rank = x.dim() + len(axes)
    for a in sorted(a % rank for a in axes):
        x = x.unsqueeze(a)
    return x


@handles("ReduceMean", "ReduceSum")
def reduce(inputs, attrs):
    x, axes = inputs[0], _axes(inputs, attrs, 1)
    keep = bool(attrs.get("keepdims", 1))
    if not axes:
        if attrs.get("noop_with_empty_axes", 0):
            return x
        axes = list(range(x.dim()))
    fn = torch.mean if attrs["op"] == "ReduceMean" else torch.sum
    return fn(x, dim=tuple(axes), keepdim=keep)


@handles("Slice")
def slice_(inputs, attrs):
    x = inputs[0]
    starts, ends = _ints(inputs[1]), _ints(inputs[2])
    axes = _ints(inputs[3] if len(inputs) > 3 else None, list(range(len(starts))))
    steps = _ints(inputs[4] if len(inputs) > 4 else None, [1] * len(starts))
    for st, en, ax, sp in zip(starts, ends, axes, steps):
        ax = ax % x.dim()
        idx = range(*slice(st, en, sp).indices(x.shape[ax]))
        if sp > 0:
            x = x[(slice(None),) * ax + (slice(idx.start, idx.stop, idx.step),)]
        else:
            x = x.index_select(ax, torch.tensor(list(idx), dtype=torch.long, device=x.device))
    return x


@handles("Softmax", "LogSoftmax")
def softmax(inputs, attrs):
    x, opset = inputs[0], attrs["opset"]
    fn = torch.softmax if attrs["op"] == "Softmax" else torch.log_softmax
    axis = attrs.get("axis", -1 if opset >= 13 else 1)
    if opset >= 13:
        return fn(x, dim=axis)
    axis = axis % x.dim()  # before opset 13: coerced to 2-D at ``axis``
    return fn(x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1), dim=1).reshape(x.shape)


@handles("Identity", "Dropout")
def identity(inputs, attrs):
    return inputs[0]


@handles("Shape")
def shape(inputs, attrs):
    dims = list(inputs[0].shape)
    start, end = attrs.get("start", 0), attrs.get("end", len(dims))
    return torch.tensor(dims[slice(start, end)], dtype=torch.int64)


@handles("Size")
def size(inputs, attrs):
    return torch.tensor(inputs[0].numel(), dtype=torch.int64)


@handles("Gather")
def gather(inputs, attrs):
    x, idx = inputs[0], inputs[1].long()
    axis = attrs.get("axis", 0) % x.dim()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    out = x.index_select(axis, idx.reshape(-1))
    return out.reshape((*x.shape[:axis], *idx.shape, *x.shape[axis + 1:]))


@handles("Cast")
def cast(inputs, attrs):
    return inputs[0].to(torch_dtype(attrs["to"]))


@handles("Constant")
def constant(inputs, attrs):
    return attrs["const"]


@handles("ConstantOfShape")
def constant_of_shape(inputs, attrs):
    value = attrs.get("value", torch.zeros(1))
    return torch.full(_ints(inputs[0]), value.reshape(-1)[0].item(), dtype=value.dtype)


@handles("Expand")
def expand(inputs, attrs):
    x, dims = inputs[0], _ints(inputs[1])
    return x * torch.ones(dims, dtype=x.dtype, device=x.device) if dims else x


@handles("QCFS")
def qcfs_op(inputs, attrs):
    return qcfs(inputs[0], inputs[1], int(attrs["levels"]), float(attrs.get("phi", 0.5)))


HANDLERS.update({"Conv": spatial.conv, "AveragePool": spatial.average_pool,
                 "MaxPool": spatial.max_pool, "GlobalAveragePool": spatial.global_average_pool,
                 "GlobalMaxPool": spatial.global_max_pool,
                 "CumSum": cumsum_op, "IFNeuron": if_op})


def torch_dtype(onnx_type: int) -> torch.dtype:
    return {TensorProto.FLOAT: torch.float32, TensorProto.DOUBLE: torch.float64,
            TensorProto.FLOAT16: torch.float16, TensorProto.INT64: torch.int64,
            TensorProto.INT32: torch.int32, TensorProto.INT8: torch.int8,
            TensorProto.UINT8: torch.uint8, TensorProto.BOOL: torch.bool}[onnx_type]


def constant_value(attr_name: str, value) -> Tensor:
    """The tensor a ``Constant`` node's attribute holds."""
    if attr_name in ("value_float", "value_int", "value_floats", "value_ints"):
        dtype = torch.float32 if attr_name.startswith("value_float") else torch.int64
        return torch.tensor(value if attr_name.endswith("t") else list(value), dtype=dtype)
    from onnx import numpy_helper
    return torch.from_numpy(numpy_helper.to_array(value).copy())


def parse_attributes(node, opset: int) -> dict:
    """A node's attributes as plain Python values (strings decoded), plus op and opset."""
    attrs: dict = {"op": node.op_type, "opset": opset}
    for attr in node.attribute:
        value = helper.get_attribute_value(attr)
        if node.op_type == "Constant":
            attrs["const"] = constant_value(attr.name, value)
            continue
        if node.op_type == "ConstantOfShape" and attr.name == "value":
            from onnx import numpy_helper
            value = torch.from_numpy(numpy_helper.to_array(value).copy())
        elif isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, list):
            value = [v.decode() if isinstance(v, bytes) else v for v in value]
        attrs[attr.name] = value
    return attrs
