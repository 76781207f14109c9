"""Small helpers for fetching: reachability probe, bounded subprocesses, progress bars."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading

from tqdm.auto import tqdm


def progress_enabled(progress: bool | None) -> bool:
    """``progress`` if given, else on only for an interactive terminal outside CI."""
    if progress is not None:
        return bool(progress)
    return sys.stderr.isatty() and not os.environ.get("CI")


def progress_bar(*, total: int, desc: str, progress: bool | None):
    """A tqdm bar on stderr, silent unless :func:`progress_enabled`."""
    return tqdm(total=total, desc=desc, disable=not progress_enabled(progress), file=sys.stderr)


def host_reachable(host: str, *, port: int = 443, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout`` seconds.

    Name resolution has no timeout of its own, so the probe runs in a daemon thread
    and is abandoned when the time is up: an offline machine answers in seconds.

    Examples
    --------
    >>> host_reachable("invalid.invalid", timeout=1.0)
    False
    """
    result = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


def run_command(args: list[str], *, cwd, timeout: float) -> subprocess.CompletedProcess:
    """Run ``args`` with captured output; raise ``OSError`` saying why it failed."""
    try:
        done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise OSError(f"`{args[0]}` is not installed (needed to run: {' '.join(args)})") from None
    except subprocess.TimeoutExpired:
        raise OSError(f"`{' '.join(args)}` did not finish within {timeout:.0f} s") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout or "").strip().splitlines()[-3:]
        raise OSError(f"`{' '.join(args)}` failed with exit code {done.returncode}: {' | '.join(tail)}")
    return done
