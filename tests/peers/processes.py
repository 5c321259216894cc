"""Waiting for a peer program that was just started to listen."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable


def wait_accepting(
    process: subprocess.Popen[bytes],
    host: str,
    port: int,
    deadline: float,
    *,
    stop: Callable[[], None],
    name: str,
) -> bool:
    """True once host:port accepts a TCP connection; False if `process` exited first.

    Past `deadline` (time.monotonic()), `stop()` is called and RuntimeError raised. A TCP
    connect is refused at once until the program has bound, so polling costs little.
    """
    while True:
        if process.poll() is not None:
            return False
        if time.monotonic() > deadline:
            stop()
            raise RuntimeError(f"{name} started but did not listen in time")
        try:
            socket.create_connection((host, port), timeout=1).close()
        except ConnectionRefusedError:
            time.sleep(0.005)
            continue
        return True


def terminate(process: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; returns once the process is reaped."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
