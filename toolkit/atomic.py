"""Atomic writes: artifacts appear complete under their final name, or not at all.

Temporary files and staging folders sit beside their target, named ``.<target>.<pid>-<host>.<random>.tmp``
/ ``.staging`` / ``.old``, where ``pid`` is the process that made them and ``host`` a short hash of the
machine's name (so a folder shared by several machines or containers never judges another's pids). A run that is killed (SIGKILL, power
loss) cannot remove its own; the next run on the same target removes those whose owner process is gone
(`remove_stale`). Interrupts that Python sees (SIGINT, and SIGTERM in the CLI) unwind through the
``finally`` blocks here and leave nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from toolkit.errors import BadInputError

__all__ = [
    "atomic_path",
    "atomic_write_text",
    "check_output_directory",
    "owner_prefix",
    "remove_stale",
    "replace_directory",
    "staging_directory",
]

log = logging.getLogger(__name__)

_SUFFIXES = (".tmp", ".staging", ".old")


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


def owner_prefix(target: Path, pid: int | None = None) -> str:
    """The name prefix of `target`'s temporaries made by process `pid` (default: this one) on this host."""
    return f".{target.name}.{os.getpid() if pid is None else pid}-{_host_tag()}."


def _owner_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale(target: Path) -> list[Path]:
    """Remove the temporary files and folders of `target` left by runs whose process is gone; returns them."""
    if not target.parent.is_dir():
        return []
    suffixes = "|".join(map(re.escape, _SUFFIXES))
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(\d+)-{_host_tag()}\.[^/]*({suffixes})$")
    removed = []
    for entry in target.parent.iterdir():
        match = pattern.match(entry.name)
        if match is None or int(match.group(1)) == os.getpid() or _owner_alive(int(match.group(1))):
            continue
        if entry.name.endswith(".old") and (entry / target.name).exists() and not target.exists():
            # killed between retiring the previous target and moving the new one in: put the old one back
            os.replace(entry / target.name, target)
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        log.info("removed %s, left by an interrupted run (process %s is gone)", entry, match.group(1))
        removed.append(entry)
    return removed


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; it replaces `target` only if the block succeeds."""
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target)
    fd, tmp_name = tempfile.mkstemp(prefix=owner_prefix(target), suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp creates 0600; artifacts get normal permissions
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(target: Path, text: str) -> None:
    """Write `text` to `target` through a temporary file and `os.replace`."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def staging_directory(target: Path) -> Iterator[Path]:
    """Yield an empty directory beside `target` that is removed when the block ends, however it ends."""
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target)
    staging = Path(tempfile.mkdtemp(prefix=owner_prefix(target), suffix=".staging", dir=target.parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def replace_directory(staging: Path, target: Path) -> None:
    """Move a fully written `staging` directory to `target`, swapping out any previous `target`."""
    if not target.exists():
        os.replace(staging, target)
        return
    retired = Path(tempfile.mkdtemp(prefix=owner_prefix(target), suffix=".old", dir=target.parent))
    os.replace(target, retired / target.name)
    try:
        os.replace(staging, target)
    except OSError:
        os.replace(retired / target.name, target)
        raise
    finally:
        shutil.rmtree(retired, ignore_errors=True)


def check_output_directory(out: Path, package: Path, force: bool, what: str) -> None:
    """Refuse an export directory `out` (`what` it will be) that is a file, holds or is `package`, or is not
    empty without `force`."""
    if out.exists() and not out.is_dir():
        raise BadInputError(f"'{out}' is a file; pass a directory path for the {what} with -o")
    resolved_out, resolved_package = out.resolve(), package.resolve()
    if resolved_out == resolved_package or resolved_out in resolved_package.parents:
        raise BadInputError(
            f"{what} '{out}' would contain or replace the package '{package}'; pick another -o"
        )
    if out.is_dir() and any(out.iterdir()) and not force:
        raise BadInputError(f"{what} '{out}' is not empty; pass --force to replace it or choose another -o")
