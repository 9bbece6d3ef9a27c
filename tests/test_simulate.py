"""The numpy IF simulator in blocks and the candidate counter equal the plain step loop bit
for bit; the disk caches of calibration give back what was written."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_rmpe.runtime import simulate
from onnx_rmpe.runtime.simulate import count_if, simulate_if
from onnx_rmpe.runtime.spike_cache import DiskArray, SpikeStore, merge_packed


def _step_loop(x_tn, theta, v_init=0.0, phi=0.5):
    """The IF dynamics written as the Scan body, one whole step at a time (the simulator
    of the previous round)."""
    theta32 = np.asarray(theta, np.float32)
    v = np.asarray(theta32 * np.float32(phi) + np.asarray(v_init, np.float32), np.float32)
    v = np.broadcast_to(v, x_tn.shape[1:]).astype(np.float32, copy=True)
    spikes = np.empty(x_tn.shape, bool)
    for t, x_t in enumerate(x_tn):
        m = (v + x_t).astype(np.float32)
        spikes[t] = m >= theta32
        v = (m - spikes[t] * theta32).astype(np.float32)
    return spikes, v


CASES = [  # shape [T, N, ...], theta, v_init (per neuron, per channel or none)
    ((4, 3, 2, 5, 5), 0.7, 0.0),
    ((7, 2, 61), 1.3, "neuron"),
    ((3, 5, 4, 3, 3), "channel", 0.1),
    ((16, 1, 300), 0.05, "neuron"),
]


@pytest.mark.parametrize("block", [1 << 17, 13])
@pytest.mark.parametrize("shape,theta,v_init", CASES)
def test_blocked_simulation_equals_the_step_loop_bit_for_bit(shape, theta, v_init, block,
                                                             monkeypatch):
    monkeypatch.setattr(simulate, "BLOCK", block)  # 13: blocks end inside samples/channels
    rng = np.random.default_rng(sum(shape))
    x = rng.normal(0.2, 0.7, shape).astype(np.float32)
    if theta == "channel":
        theta = (rng.random((shape[2], 1, 1)) + 0.3).astype(np.float32)
    if v_init == "neuron":
        v_init = rng.normal(0, 0.4, shape[2:]).astype(np.float32)
    spikes, v = simulate_if(x, theta, v_init)
    ref_spikes, ref_v = _step_loop(x, theta, v_init)
    np.testing.assert_array_equal(spikes, ref_spikes)
    np.testing.assert_array_equal(v.view(np.uint32), ref_v.view(np.uint32))
    assert 0.05 < spikes.mean() < 0.95  # a case that fires and stays silent


@pytest.mark.parametrize("T", [5, 300])
def test_candidate_counts_equal_the_spike_sums(T, monkeypatch):
    monkeypatch.setattr(simulate, "BLOCK", 37)
    rng = np.random.default_rng(T)
    x = rng.normal(0.3, 0.8, (T, 3, 4, 6)).astype(np.float32)
    thetas = [0.2 * 2 ** (k / 2) for k in range(8)]
    counts, kept = count_if(x, thetas, keep=(1, 6))
    for k, theta in enumerate(thetas):
        ref, _ = _step_loop(x, theta)
        np.testing.assert_array_equal(counts[k], ref.sum(0))
        if k in kept:
            np.testing.assert_array_equal(kept[k], ref)
    assert sorted(kept) == [1, 6] and counts[0].max() > 0 and counts[0].max() <= T
    assert len({int(c.sum()) for c in counts}) == len(thetas)  # the candidates differ


def test_disk_array_and_packed_merge(tmp_path):
    rng = np.random.default_rng(0)
    store = SpikeStore(str(tmp_path), "currents")
    x = rng.normal(size=(3, 10, 2, 4)).astype(np.float32)
    arr = store.new(x.shape, DiskArray)
    arr[:, 0:4] = x[:, 0:4]
    arr[:, 4:10] = x[:, 4:10]
    np.testing.assert_array_equal(arr[:, 2:9], x[:, 2:9])
    assert store.peak_bytes == x.nbytes
    spikes = SpikeStore(str(tmp_path))
    a_bits, b_bits = rng.random((2, 3, 10, 3, 5)) < 0.4
    a, b = spikes.new(a_bits.shape), spikes.new(b_bits.shape)
    a[:, 0:10], b[:, 0:10] = a_bits, b_bits
    mask = rng.random((3, 5)) < 0.5
    merge_packed(a, b, mask, batch=3)
    np.testing.assert_array_equal(a[:, 0:10], np.where(mask, a_bits, b_bits))
    with pytest.raises(IndexError):
        arr[:, [1, 2]]
    for cache in (arr, a, b):
        (store if cache is arr else spikes).free(cache)
    assert store.live == 0 and spikes.live == 0 and not list(tmp_path.iterdir())


def test_batch_plan_leaves_room_for_the_process_and_the_caches(resnet, digits_data):
    """The calibration's batches get the budget minus the process's resident memory and
    the caches it keeps (at least a quarter of the budget)."""
    from onnx_rmpe.conversion import convert
    from onnx_rmpe.runtime.memory import bytes_per_sample, plan_batch_within, resident_bytes
    (x, _), _ = digits_data
    snn = convert(resnet, T=16, calib=x[:32], rmpe=False, thresholds="percentile").snn
    per = bytes_per_sample(snn)
    rss = resident_bytes()
    assert rss > 20 << 20  # the process with numpy and onnxruntime loaded
    room = 3 * (rss + (8 << 20))  # more than a quarter of the budget below
    budget = rss + (8 << 20) + room
    got = plan_batch_within(snn, 10**9, budget, what="t", reserved=8 << 20)
    assert 0.9 * room / per <= got <= room / per  # the RSS grows a little in between
    floor = plan_batch_within(snn, 10**9, budget, what="t", reserved=1 << 40)
    assert floor == budget // 4 // per
    assert plan_batch_within(snn, 7, budget, what="t") == 7


def test_spike_store_refuses_a_file_that_does_not_fit_the_free_disk(tmp_path, monkeypatch):
    import collections
    import shutil

    from onnx_rmpe.errors import DISK_MARGIN, DiskSpaceError
    from onnx_rmpe.runtime.spike_cache import PackedSpikes

    usage = collections.namedtuple("usage", "total used free")
    free = DISK_MARGIN + 1000
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(free, 0, free))
    store = SpikeStore(str(tmp_path))
    fits = store.new((4, 10, 25 * 8), PackedSpikes)  # 4 * 10 * 25 = 1000 bytes: just fits
    assert fits.nbytes == 1000 == PackedSpikes.row_bytes((4, 10, 200)) * 40
    with pytest.raises(DiskSpaceError, match=str(tmp_path)):
        store.new((4, 10, 26 * 8), PackedSpikes)
    with pytest.raises(DiskSpaceError):
        store.new((4, 10, 100), DiskArray)  # float32 currents: 16000 bytes
    assert store.live == 1000 and len(list(tmp_path.iterdir())) == 1
    store.free(fits)
