"""`meldpunt serve` as the operator runs it: a process of its own on 127.0.0.1, found by the
line it prints once it listens, ready once /readyz says so; and deployments on PostgreSQL."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import requests

from tests.test_cli import CLI, cli_env, free_port

LISTENING = re.compile(r"listening on (http://\S+) ")


class ServeProcess:
    def __init__(self, process: subprocess.Popen[str], url: str) -> None:
        self.process = process
        self.url = url

    def stop(self, timeout: float = 30) -> tuple[int, str, str]:
        """SIGTERM, then (exit code, the rest of stdout, stderr)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        out, err = self.process.communicate(timeout=timeout)
        return self.process.returncode, out, err


def start_serve(
    config: Path, cwd: Path, *args: str, env: dict[str, str] | None = None, ready_within: float = 60
) -> ServeProcess:
    """`meldpunt serve --port <free> ARGS` until its startup line and a ready /readyz."""
    environment = env if env is not None else cli_env(config)
    process = subprocess.Popen(
        [*CLI, "serve", "--host", "127.0.0.1", "--port", str(free_port()), *args],
        cwd=cwd,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its workers with it: a kill reaches them all (kill_all)
    )
    assert process.stdout is not None
    line = process.stdout.readline()  # blocks until the server listens (or exits)
    found = LISTENING.search(line)
    if not found:
        out, err = kill_all(process)
        raise AssertionError(f"no startup line; stdout {line + out!r}\nstderr {err}")
    served = ServeProcess(process, found.group(1))
    deadline = time.monotonic() + ready_within
    while True:
        with contextlib.suppress(requests.RequestException):
            if requests.get(served.url + "/readyz", timeout=5).status_code == 200:
                return served
        if time.monotonic() > deadline or process.poll() is not None:
            out, err = kill_all(process)
            raise AssertionError(f"server never ready\nstdout {out}\nstderr {err}")
        time.sleep(0.1)


@contextlib.contextmanager
def serving(config: Path, cwd: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[ServeProcess]:
    served = start_serve(config, cwd, *args, env=env)
    try:
        yield served
    finally:
        kill_all(served.process)


def kill_all(process: subprocess.Popen[str]) -> tuple[str, str]:
    """SIGKILL the server and the workers it started (its own process group); their output.
    Killing the parent alone would leave the workers holding its pipes open."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    return process.communicate(timeout=30)


def pg_env(config: Path, database_url: str, **extra: str) -> dict[str, str]:
    """The CLI's environment for a deployment whose store is `database_url`."""
    return cli_env(config) | {"MELDPUNT_DATABASE_URL": database_url} | extra
