"""README.md tells the truth: every command and snippet it shows runs, on the demo's files.

The demo (README's first command, ``onnx-rmpe demo``) runs once; then

* every shown run (a ``$ onnx-rmpe ...`` line in a code block, with the output below it) is
  run again in a copy of the demo folder, in README order, as a user following along
  would; it must exit 0 and every output line README shows must appear in the real output,
  with numbers masked (timings and accuracies vary by machine), box drawing and spacing
  ignored, and ``...`` lines standing for omitted output;
* every command synopsis (a line starting ``onnx-rmpe``) runs in a fresh copy of the demo
  folder with all its optional ``[...]`` parts (the first alternative of ``a|b``), so every
  option README names exists and takes the value shown; placeholders (``MODEL.onnx``,
  ``CALIB.npz``, ...) become the demo's files. (The bare forms are the full ones minus
  options; the main ones are also shown runs above. Running both doubled the suite's
  time.)
* every Python block runs in a folder holding the files its text names.

So README cannot go stale: change an output or an option, and this test says where.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")  # the demo trains with torch (the [torch] extra of README)

README = Path(__file__).resolve().parents[1] / "README.md"
CLI = [sys.executable, "-m", "onnx_rmpe.cli.main"]
ENV = {**os.environ, "COLUMNS": "100", "NO_COLOR": "1", "PYTHONHASHSEED": "0"}

#: README placeholders -> files of the demo folder (or values), longest first.
PLACEHOLDERS = {
    "MODEL.snn.onnx": "digits_cnn.snn.onnx", "MODEL.qcfs.onnx": "digits_cnn.qcfs.onnx",
    "MODEL.nir": "digits_cnn.nir", "MODEL.onnx": "digits_cnn.onnx",
    "SNN.onnx": "digits_cnn.snn.onnx", "QCFS.onnx": "digits_cnn.qcfs.onnx",
    "ANN.onnx": "digits_cnn.onnx",
    "OUT.onnx": "out.onnx", "CALIB.npz": "calib.npz", "NEW.npz": "calib.npz",
    "TEST.npz": "test.npz", "TRAIN.npz": "train.npz", "VAL.npz": "test.npz",
    "REPORT.json": "out.json", "DIR": "report_out", "N": "1", "W": "0.5",
}
_PLACEHOLDER = re.compile(r"(?<![\w.])(" + "|".join(re.escape(k) for k in PLACEHOLDERS)
                          + r")(?![\w.])")
#: a number (int, float, exponent) with an optional unit suffix
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?:[kMGT%s])?(?![\w])")
_BOX = re.compile(r"[\u2500-\u257f]")
_VERDICT = re.compile(r"REJECTED \(previous potentials kept\)|\bkept\b|\brejected\b|"
                      r"\blayerwise\b")


# ----------------------------------------------------------------------------- README parsing
def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block."""
    return re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M)


def shown_runs(text: str) -> list[tuple[str, list[str]]]:
    """Every ``$ onnx-rmpe ...`` line with the output lines README shows below it."""
    runs: list[tuple[str, list[str]]] = []
    for _, body in code_blocks(text):
        for line in body.splitlines():
            if line.startswith("$ "):
                runs.append((line[2:], []))
            elif runs and body.lstrip().startswith("$ ") and line.strip():
                runs[-1][1].append(line)
    return runs


def synopses(text: str) -> list[str]:
    """Every command synopsis (``onnx-rmpe ...`` plus its indented continuation lines)."""
    found: list[str] = []
    for lang, body in code_blocks(text):
        if lang not in ("", "bash"):
            continue
        for line in body.splitlines():
            if line.startswith("onnx-rmpe "):
                found.append(line.split("  #")[0].strip())
            elif found and line.startswith("    ") and line.strip().startswith("["):
                found[-1] += " " + line.strip()
    return found


def python_blocks(text: str) -> list[str]:
    return [body for lang, body in code_blocks(text) if lang == "python"]


def variants(synopsis: str) -> list[list[str]]:
    """The synopsis without its optional parts, and with all of them."""
    bare = re.sub(r"\s*\[[^\]]*\]", "", synopsis)
    full = re.sub(r"\[([^\]]*)\]", lambda m: m.group(1), synopsis)
    full = re.sub(r"(\S+?)\|\S+", r"\1", full)  # a|b -> a
    return [_args(bare), _args(full)]


def test_variants_drop_or_keep_the_optional_parts():
    assert variants("onnx-rmpe evaluate MODEL.onnx --data TEST.npz [--T 1,2] [--device cpu|cuda]") \
        == [["evaluate", "digits_cnn.onnx", "--data", "test.npz"],
            ["evaluate", "digits_cnn.onnx", "--data", "test.npz", "--T", "1,2", "--device",
             "cpu"]]


def _args(command: str) -> list[str]:
    words = shlex.split(_PLACEHOLDER.sub(lambda m: PLACEHOLDERS[m.group(1)], command))
    assert words[0] == "onnx-rmpe", command
    return words[1:]


def normalize(line: str) -> str:
    """A line with numbers masked, box drawing removed and spacing collapsed."""
    line = _BOX.sub(" ", _NUMBER.sub("#", line))
    line = _VERDICT.sub("<verdict>", line)  # the check's outcome may differ by machine
    return " ".join(line.split())


# ----------------------------------------------------------------------------- running
def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=1800)  # generous: a loaded 2-core machine


def _copy_demo(demo: Path, dest: Path) -> Path:
    shutil.copytree(demo, dest, ignore=shutil.ignore_patterns("report"))
    return dest


@pytest.fixture(scope="module")
def readme() -> str:
    return README.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """README's main job, `onnx-rmpe demo`, run once; its folder holds the demo's files."""
    root = tmp_path_factory.mktemp("readme")
    res = run_cli(["demo"], root)  # exactly README's command
    assert res.returncode == 0, res.stdout + res.stderr
    return root / "onnx-rmpe-demo", res


def test_readme_shows_runs_and_synopses(readme):
    """The parsers find what README shows (so the tests below cannot pass vacuously)."""
    commands = {cmd.split()[1] for cmd, _ in shown_runs(readme)}
    assert {"demo", "convert", "evaluate", "inspect", "export-nir"} <= commands
    assert {s.split()[1] for s in synopses(readme)} >= {
        "convert", "evaluate", "calibrate", "finetune", "export-nir", "inspect"}
    assert len(python_blocks(readme)) >= 4


def test_demo_reaches_the_accuracy_it_promises(demo):
    """The main job works: the SNN it writes is accurate on the held-out digits."""
    folder, res = demo
    assert res.stdout.rstrip().splitlines()[-1].startswith("PASSED")
    table = dict(re.findall(r"^│\s*(\d+) │\s*[\d.]+ │\s*([\d.]+) │$", res.stdout, flags=re.M))
    assert set(table) == {"1", "2", "4", "8", "16", "32"}
    assert float(table["4"]) > 0.9 and float(table["32"]) > 0.95  # ANN: about 0.99
    for name in ("digits_cnn.onnx", "digits_cnn.qcfs.onnx", "digits_cnn.snn.onnx",
                 "calib.npz", "test.npz", "train.npz", "report/report.json"):
        assert (folder / name).is_file(), name


def test_shown_runs_match_readme(demo, readme, tmp_path):
    """Every `$ onnx-rmpe ...` run, in README order in one folder, prints what README shows."""
    folder, demo_res = demo
    work = _copy_demo(folder, tmp_path / "work")
    problems = []
    for command, shown in shown_runs(readme):
        args = shlex.split(command)[1:]
        if args[0] == "demo":
            res = demo_res  # already run (in the parent folder of the demo's files)
        else:
            res = run_cli(args, work)
        if res.returncode != 0:
            problems.append(f"$ {command}: exit {res.returncode}\n{res.stderr[-2000:]}")
            continue
        real = {normalize(line) for line in (res.stdout + res.stderr).splitlines()}
        missing = [line for line in shown
                   if line.strip() != "..." and normalize(line) and normalize(line) not in real]
        if missing:
            problems.append(f"$ {command}: README shows lines the run does not print:\n  "
                            + "\n  ".join(missing) + "\nreal output:\n" + res.stdout)
    assert not problems, "\n\n".join(problems)


def test_synopses_run(demo, readme, tmp_path):
    """Every synopsis runs with all its optional parts.

    The demo's synopsis is not run again (its bare form is README's first command, run by
    the fixture): its optional values must then be exactly the defaults.
    """
    from onnx_rmpe.cli.main import cli

    folder, _ = demo
    problems, seen = [], set()
    for i, synopsis in enumerate(synopses(readme)):
        for j, args in enumerate(variants(synopsis)[1:]):
            if tuple(args) in seen:
                continue
            seen.add(tuple(args))
            if args[0] == "demo":
                problems += _non_defaults(cli.commands["demo"], args[1:])
                continue
            work = _copy_demo(folder, tmp_path / f"s{i}_{j}")
            if args[0] == "inspect" and args[1].endswith(".nir"):
                run_cli(["export-nir", "digits_cnn.snn.onnx", "-o", args[1]], work)
            res = run_cli(args, work)
            if res.returncode != 0 or "PASSED" not in res.stdout:
                problems.append(f"onnx-rmpe {shlex.join(args)}: exit {res.returncode}\n"
                                f"{res.stderr[-1500:]}")
    assert not problems, "\n\n".join(problems)


def _non_defaults(command, args: list[str]) -> list[str]:
    """The options in ``args`` whose value is not the command's default."""
    ctx = command.make_context("demo", list(args))
    return [f"demo {p.opts[0]}={ctx.params[p.name]!r} is not its default {p.default!r}"
            for p in command.params if p.name in ctx.params
            and getattr(p, "default", None) is not None
            and str(ctx.params[p.name]) != str(p.default)]


def _python_folder(demo: Path, dest: Path) -> Path:
    """The files README's Python blocks name, made from the demo's."""
    from onnx_rmpe import convert

    dest.mkdir()
    shutil.copy(demo / "digits_cnn.onnx", dest / "model.onnx")
    for name, src in (("calib.npz", "calib.npz"), ("test.npz", "test.npz"),
                      ("other.npz", "calib.npz")):
        shutil.copy(demo / src, dest / name)
    convert(dest / "model.onnx", T=8, calib=dest / "calib.npz", mode="streaming",
            output=dest / "model.stream.onnx")
    return dest


def test_python_blocks_run(demo, readme, tmp_path, monkeypatch):
    """Every Python block of README runs as written (in a folder with the files it names)."""
    folder, _ = demo
    work = _python_folder(folder, tmp_path / "py")
    monkeypatch.chdir(work)
    for i, block in enumerate(python_blocks(readme)):
        namespace: dict = {"__name__": f"readme_block_{i}"}
        try:
            exec(compile(block, f"README.md python block {i}", "exec"), namespace)
        except Exception as exc:  # noqa: BLE001 - report which block failed
            pytest.fail(f"README python block {i} failed: {exc!r}\n{block}")
    data = np.load(work / "test.npz")
    assert (work / "model.snn.onnx").is_file() and len(data["x"]) > 0
