"""Ledger backends for the conformance suite: a SQLite file in a tmp dir and a
REAL redis-server started on a free loopback port (installed with apt-get when
missing), stopped after the session. Shared by every conformance suite."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ensure_redis_server() -> str:
    exe = shutil.which("redis-server")
    if exe is None:
        subprocess.run(["apt-get", "update"], check=True, capture_output=True, timeout=300)
        subprocess.run(["apt-get", "install", "-y", "redis-server"], check=True, capture_output=True, timeout=600)
        exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server could not be installed")
    return exe


def start_redis_server(workdir: Path, port: int | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """Starts a real, private redis-server (no persistence) and waits until it answers PING.

    Args:
        workdir: its working folder.
        port: the loopback port (a free one when None; reuse one to "restart" a server).

    Returns:
        ``(process, url)``; stop it with `stop_redis_server`.
    """
    exe = _ensure_redis_server()
    port = port or _free_port()
    proc = subprocess.Popen(
        [
            exe,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    try:
        for _ in range(200):
            try:
                client.ping()
                return proc, url
            except redis.exceptions.ConnectionError:
                if proc.poll() is not None:
                    pytest.fail("redis-server exited at start")
                time.sleep(0.025)
        stop_redis_server(proc)
        pytest.fail("redis-server did not answer PING")
    finally:
        client.close()


def stop_redis_server(proc: subprocess.Popen[bytes]) -> None:
    """Terminates a server started by `start_redis_server` (killed after 10 s)."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real, private redis-server; no persistence."""
    proc, url = start_redis_server(tmp_path_factory.mktemp("redis"))
    try:
        yield url
    finally:
        stop_redis_server(proc)
