"""Output files: one guard for every path a run writes, atomic writes, no debris.

Every command and API function that writes checks all its output paths up front with
:func:`check_outputs`, before any work:

- an output may not resolve (symlinks followed) to one of the run's inputs, nor to another
  output of the same run;
- an existing output must be a regular file (never a device, a folder or a fifo);
- its folder must exist or be creatable, be a folder, and be writable (so ``/proc``,
  ``/sys``, read-only mounts and a parent that is a file are refused before minutes of
  work, with one line naming the option).

Files are written atomically (:func:`write_bytes`): a temporary file beside the target,
given the permissions a new file gets under the user's umask, renamed into place. A killed
run can leave a temporary file; its name carries the process id, and the next write into
that folder removes temporaries whose process is gone.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import stat
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from onnx_rmpe.errors import OutputPathError

logger = logging.getLogger(__name__)

TMP_PREFIX = ".onnx-rmpe-tmp-"
#: Prefix of the temporary work folders (spike caches) of a run.
WORK_PREFIX = "onnx-rmpe-work-"
_TMP_RE = re.compile(re.escape(TMP_PREFIX) + r"(\d+)-")
#: Temporary folders (spike caches) older than this are stale leftovers of killed runs.
STALE_SECONDS = 24 * 3600
_VIRTUAL_FS = ("/proc", "/sys", "/dev")

PathLike = str | os.PathLike


def _resolved(path: PathLike) -> Path:
    return Path(os.path.realpath(os.fspath(path)))


def check_outputs(outputs: Mapping[str, PathLike | None],
                  inputs: Mapping[str, PathLike | None] | None = None) -> None:
    """Refuse outputs that would destroy an input, collide, or cannot be written.

    ``outputs`` and ``inputs`` map the name of the option (or API parameter) to a path;
    ``None`` entries are ignored. Raises :class:`OutputPathError` naming the option.
    """
    seen: dict[Path, str] = {}
    for name, path in (inputs or {}).items():
        if path is not None and isinstance(path, (str, os.PathLike)):
            seen[_resolved(path)] = f"the input {name}"
    for name, path in outputs.items():
        if path is None:
            continue
        target = _resolved(path)
        if target in seen:
            raise OutputPathError(name, path, f"it is {seen[target]}; choose another path")
        _check_writable(name, path, target)
        seen[target] = f"also the output {name}"


def _check_writable(name: str, path: PathLike, target: Path) -> None:
    if any(str(target) == root or str(target).startswith(root + "/") for root in _VIRTUAL_FS):
        raise OutputPathError(name, path, f"'{target}' is on a system file system "
                                          "(/proc, /sys, /dev); write to a regular folder")
    if target.exists() or target.is_symlink():
        mode = os.stat(target).st_mode if target.exists() else 0
        if not stat.S_ISREG(mode):
            raise OutputPathError(name, path, "it exists and is not a regular file")
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OutputPathError(name, path, f"'{parent}' is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(name, path, f"the folder '{parent}' is not writable")


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_bytes(path: PathLike, data: bytes, *, name: str = "output") -> Path:
    """Write ``data`` to ``path`` atomically with the permissions of a normal new file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", suffix=path.suffix,
                                   dir=path.parent)
    except OSError as exc:
        raise OutputPathError(name, path, _os_reason(exc)) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OutputPathError(name, path, _os_reason(exc)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: PathLike, text: str, *, name: str = "output") -> Path:
    return write_bytes(path, text.encode(), name=name)


def _os_reason(exc: OSError) -> str:
    if exc.errno == errno.EROFS:
        return "the file system is read-only"
    if exc.errno == errno.ENOSPC:
        return "no space left on the device"
    return exc.strerror or str(exc)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: Path) -> None:
    """Remove temporaries of runs that were killed while writing into ``folder``."""
    with contextlib.suppress(OSError):
        for entry in folder.iterdir():
            match = _TMP_RE.match(entry.name)
            if match and int(match.group(1)) != os.getpid() \
                    and not _pid_alive(int(match.group(1))):
                entry.unlink(missing_ok=True)
                logger.debug("removed stale temporary %s", entry)


def remove_stale_work_dirs(prefix: str = WORK_PREFIX, *, now: float | None = None) -> int:
    """Remove work folders of killed runs (``onnx-rmpe-work-*`` in the temp folder, older
    than a day); returns their count."""
    import shutil

    now = time.time() if now is None else now
    removed = 0
    root = Path(tempfile.gettempdir())
    with contextlib.suppress(OSError):
        for entry in root.iterdir():
            if entry.name.startswith(prefix) and entry.is_dir() and not entry.is_symlink():
                with contextlib.suppress(OSError):
                    if now - entry.stat().st_mtime > STALE_SECONDS:
                        shutil.rmtree(entry, ignore_errors=True)
                        removed += 1
    return removed


def remove_quietly(paths: Iterable[PathLike | None]) -> None:
    """Best-effort removal of files this run wrote (when a later output failed)."""
    for path in paths:
        if path is not None:
            with contextlib.suppress(OSError):
                Path(path).unlink(missing_ok=True)
