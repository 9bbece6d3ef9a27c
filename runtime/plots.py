"""PNG figures of a report (matplotlib, the ``[plot]`` extra; optional).

* ``accuracy_vs_T.png``: accuracy after each step, the ANN / QCFS ANN as lines;
* ``firing_rates.png``: mean firing rate and silent / saturated fractions per layer;
* ``energy_vs_accuracy.png``: one point per step (energy per inference, accuracy), the
  ANN as a reference point.

Only matplotlib's object API is used (no pyplot, no global backend switch).
"""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)

MISSING_NOTE = ('matplotlib is not installed: no PNG written (the JSON and the table are); '
                'install it with: pip install "onnx-rmpe[plot]"')


def _figure(width: float = 6.0, height: float = 4.0):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return fig, fig.add_subplot()


def write_plots(result, out: Path) -> tuple[list[Path], str | None]:
    """Write the PNGs of ``result`` (a ReportResult) into ``out``; (files, note)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        logger.info(MISSING_NOTE)
        return [], MISSING_NOTE
    files = [_firing_rates(result, out / "firing_rates.png")]
    if result.accuracy_per_step:
        files.insert(0, _accuracy(result, out / "accuracy_vs_T.png"))
        files.append(_energy(result, out / "energy_vs_accuracy.png"))
    return files, None


def _references(result) -> list[tuple[str, float]]:
    refs = [("ANN", result.ann_accuracy), ("QCFS ANN", result.qcfs_accuracy)]
    return [(label, 100 * acc) for label, acc in refs if acc is not None]


def _accuracy(result, path: Path) -> Path:
    fig, ax = _figure()
    steps = list(range(1, len(result.accuracy_per_step) + 1))
    ax.plot(steps, [100 * a for a in result.accuracy_per_step], "o-", label="SNN")
    for (label, acc), style in zip(_references(result), ("--", ":")):
        ax.axhline(acc, linestyle=style, color="gray" if label == "ANN" else "tab:orange",
                   label=f"{label} ({acc:.1f} %)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(steps if len(steps) <= 8 else steps[::max(1, len(steps) // 8)])
    ax.get_xaxis().set_major_formatter("{x:.0f}")
    ax.set_xlabel("time step t")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"SNN accuracy after each step ({result.samples} samples)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.savefig(path)
    return path


def _firing_rates(result, path: Path) -> Path:
    layers = result.spiking_layers
    fig, ax = _figure(max(6.0, 0.6 * len(layers) + 2), 4.0)
    xs = range(len(layers))
    width = 0.27
    for k, (attr, label) in enumerate((("firing_rate", "firing rate"),
                                       ("silent_fraction", "silent"),
                                       ("saturated_fraction", "saturated"))):
        ax.bar([x + (k - 1) * width for x in xs], [getattr(la, attr) for la in layers],
               width, label=label)
    ax.set_xticks(list(xs), [la.name for la in layers], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("spikes per neuron per step / fraction")
    ax.set_title(f"Spiking layers, T={result.T}")
    ax.legend()
    fig.savefig(path)
    return path


def _energy(result, path: Path) -> Path:
    fig, ax = _figure()
    energy = [e / 1e6 for e in result.snn_energy_pj_per_step]  # pJ -> uJ
    acc = [100 * a for a in result.accuracy_per_step]
    ax.plot(energy, acc, "o-", label="SNN, t = 1..T")
    for t, (e, a) in enumerate(zip(energy, acc), start=1):
        ax.annotate(f"t={t}", (e, a), textcoords="offset points", xytext=(4, -10), fontsize=7)
    refs = _references(result)
    if refs:
        ax.plot([result.ann_energy_pj / 1e6], [refs[0][1]], "s", color="black",
                label=refs[0][0])
    ax.set_xlabel(f"energy per inference (uJ; {result.energy_mac_pj} pJ/MAC, "
                  f"{result.energy_ac_pj} pJ/AC)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Accuracy against energy")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.savefig(path)
    return path
