"""The streaming SNN: one time step per call, membrane potentials as state.

:func:`onnx_rmpe.forms.snn_to_streaming` turns a multi-step SNN (``convert(...).snn``) into
the one-step model (the streaming pass of passes/); :class:`StreamingRunner` steps it in
onnxruntime, feeding each call's ``<state>_next`` outputs back as the next ``<state>``
inputs. Initial state (the defaults stored in the model): ``<layer>.v = phi * theta +
v_init`` (the calibrated per-neuron ``v_init`` included), every running sum (cumulative
max pools, readouts) and the step counter ``step`` = 0.

Example::

    stream = snn_to_streaming(convert("ann.onnx", T=8, calib=x).snn)
    runner = StreamingRunner(stream)
    per_step = runner.run(x_batch, T=8)      # [T, N, K]: running mean after each step
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_rmpe.errors import OptionError
from onnx_rmpe.modelio import get_metadata
from onnx_rmpe.ops import NEXT_SUFFIX, STEP_SUFFIX
from onnx_rmpe.runtime.session import Device, make_session

logger = logging.getLogger(__name__)


def initial_states(model: onnx.ModelProto, batch: int) -> dict[str, np.ndarray]:
    """The start value of every state input, broadcast to ``batch`` (a fresh copy)."""
    inits = {i.name: i for i in model.graph.initializer}
    states = {}
    for vi in model.graph.input:
        if vi.name in inits:
            value = numpy_helper.to_array(inits[vi.name])
            shape = (batch, *value.shape[1:]) if value.ndim else value.shape
            states[vi.name] = np.broadcast_to(value, shape).astype(np.float32)
    return states


def _states_as_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose state inputs have no default (onnxruntime binds only true inputs)."""
    inputs = {i.name for i in model.graph.input}
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    keep = [i for i in copy.graph.initializer if i.name not in inputs]
    del copy.graph.initializer[:]
    copy.graph.initializer.extend(keep)
    return copy


class StreamingRunner:
    """Steps a streaming (or chunked) model in onnxruntime, carrying the state between calls.

    ``step(x)`` feeds the input of one time step (the same image every step for a static
    input) and returns the model's first output after that step (the running mean of the
    logits); ``outputs`` holds all outputs of the last step by name. A chunked model
    (metadata ``onnx_rmpe.chunk`` = k) runs k steps per ``step`` call.

    With ``io_binding``, after the first call the states live in two
    preallocated buffers that two prepared bindings swap (call t reads A and writes B, call
    t + 1 the reverse): no state is converted, copied or bound again, and outputs become
    numpy arrays only when read. Off by default: on CPU it measured 3-10 % slower than
    ``session.run`` at batch 1 (benchmarks/runtime.py); it is meant for devices where a
    state copy crosses a bus (not measured: no GPU was available).
    """

    @property
    def outputs(self) -> dict[str, np.ndarray]:
        """All outputs of the last call, by name."""
        return {n: self._numpy(n) for n in self._values}

    def __init__(self, model: onnx.ModelProto, *, device: Device = "cpu",
                 threads: int | None = None, io_binding: bool = False) -> None:
        self.model = model
        self.session = make_session(_states_as_inputs(model) if io_binding else model,
                                    device=device, threads=threads)
        init_names = {i.name for i in model.graph.initializer}
        inputs = [i.name for i in model.graph.input]  # ORT lists defaulted inputs apart
        self.data_inputs = [n for n in inputs if n not in init_names]
        self.state_names = [n for n in inputs if n in init_names]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._values: dict = {}
        self.states: dict = {}
        self.io_binding = io_binding
        self._bindings = None
        cuda = self.session.get_providers()[0] == "CUDAExecutionProvider"
        self._device = "cuda" if cuda else "cpu"
        self.batch, self.t = -1, 0
        self.chunk = int(get_metadata(model).get("onnx_rmpe.chunk", 1))
        if len(self.data_inputs) != 1:
            raise OptionError("model", f"StreamingRunner needs one data input, the model has "
                                       f"{self.data_inputs}")

    def reset(self, batch: int) -> None:
        """Start over: every state at its initial value for ``batch`` samples."""
        self.states = initial_states(self.model, batch)
        self.batch, self.t = batch, 0
        self._bindings: list | None = None

    def step(self, x: np.ndarray) -> np.ndarray:
        """Run one time step on ``x`` ``[N, ...]``; returns the first output."""
        if self.batch != len(x):
            if self.t:
                raise OptionError("x", f"batch {len(x)} differs from the running batch; "
                                       "call reset(batch) first")
            self.reset(len(x))
        if self.io_binding and self._bindings is not None:
            values = self._run_bound(x)
        else:
            values = self.session.run(self.output_names, {self.data_inputs[0]: x, **self.states})
            if self.io_binding:
                self._bindings = self._ping_pong(values)
        self._values = dict(zip(self.output_names, values))
        self.states = {n: self._values[f"{n}{NEXT_SUFFIX}"] for n in self.state_names}
        self.t += self.chunk
        return self._numpy(self.output_names[0])

    def _ping_pong(self, values: list[np.ndarray]) -> list:
        """Two bindings over two preallocated state buffers: A -> B, then B -> A."""
        from onnxruntime import OrtValue

        first = dict(zip(self.output_names, values))
        a = {n: OrtValue.ortvalue_from_numpy(np.ascontiguousarray(first[f"{n}{NEXT_SUFFIX}"]),
                                             self._device) for n in self.state_names}
        b = {n: OrtValue.ortvalue_from_numpy(np.empty_like(first[f"{n}{NEXT_SUFFIX}"]),
                                             self._device) for n in self.state_names}
        state_of = {f"{n}{NEXT_SUFFIX}": n for n in self.state_names}
        bindings = []
        for src, dst in ((a, b), (b, a)):
            binding = self.session.io_binding()
            for n in self.state_names:
                binding.bind_ortvalue_input(n, src[n])
            for name in self.output_names:  # get_outputs() keeps this order
                if name in state_of:
                    binding.bind_ortvalue_output(name, dst[state_of[name]])
                else:
                    binding.bind_output(name, self._device)
            bindings.append([binding, None])
        return bindings

    def _run_bound(self, x: np.ndarray) -> list:
        slot = self._bindings[(self.t // self.chunk - 1) % 2]
        binding = slot[0]
        if slot[1] is not x:  # the data input is bound once per array
            binding.bind_cpu_input(self.data_inputs[0], np.ascontiguousarray(x))
            slot[1] = x
        self.session.run_with_iobinding(binding)
        return binding.get_outputs()

    def run(self, x: np.ndarray, T: int, *, output: str | None = None) -> np.ndarray:
        """Reset, then ``T`` steps on ``x`` (static ``[N, ...]`` or per step ``[T, N, ...]``).

        Returns ``[T, N, ...]``: ``output`` (default: the first) after each step.
        """
        rank = len(self.session.get_inputs()[0].shape)
        per_step = x.ndim == rank + 1
        self.reset(x.shape[1] if per_step else x.shape[0])
        name = output or self.output_names[0]
        if self.chunk > 1:
            return self._run_chunks(x, T, name, per_step)
        out = []
        for t in range(T):
            self.step(x[t] if per_step else x)
            out.append(self._numpy(name))
        return np.stack(out)

    def _numpy(self, name: str) -> np.ndarray:
        value = self._values[name]  # a bound output's buffer is reused by the next call
        return value if isinstance(value, np.ndarray) else np.array(value.numpy())

    def _run_chunks(self, x: np.ndarray, T: int, name: str, per_step: bool) -> np.ndarray:
        if per_step or T % self.chunk:
            raise OptionError("T", f"a chunked model runs {self.chunk} steps per call on a "
                                   f"static input: T must be a multiple of it (got {T}) and "
                                   "x one input for all steps")
        out = []
        for _ in range(T // self.chunk):
            self.step(x)
            out.append(self._numpy(f"{name}_per_step"))
        return np.concatenate(out)


__all__ = ["STEP_SUFFIX", "StreamingRunner", "initial_states"]
