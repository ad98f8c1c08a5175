"""One run-local per workdir: an advisory lock on ``<workdir>/.run-local.lock``.

``fcntl.flock`` on an open file description: the lock lasts as long as any process holds
that description. run-local takes it before it starts anything and hands the descriptor to
every process it starts (``pass_fds``), so the workdir stays locked until the last of them
has ended — also when run-local itself was killed and its processes are still stopping
(they get SIGTERM then: :func:`llm_finetune.core.proc.parent_death_signal`). The file holds
the PID and start time of the run-local that took it, for the refusal message.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path

from ..core.errors import UserError

LOCK_NAME = ".run-local.lock"


def lock_workdir(workdir: Path) -> int:
    """Lock ``workdir`` for this run-local; returns the descriptor (inheritable). UserError when it is taken."""
    path = workdir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
        os.close(fd)
        if exc.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        raise _taken(workdir, holder) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n".encode(), 0)
    return fd


def _taken(workdir: Path, holder: list[str]) -> UserError:
    pid = int(holder[0]) if holder and holder[0].isdigit() else None
    since = f" since {holder[1]}" if len(holder) > 1 else ""
    if pid is not None and _alive(pid):
        return UserError(f"{workdir} is in use by another run-local (PID {pid}{since})",
                         hint=f"wait for it to end, stop it (kill -INT {pid}), or use another --workdir")
    return UserError(f"{workdir} is still in use by the processes of run-local PID {pid}{since}, which has ended: "
                     "they are stopping", hint="try again in a few seconds, or use another --workdir")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False
