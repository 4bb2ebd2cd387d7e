"""`meldpunt serve` stops on SIGTERM as a service manager expects (issue #15, item 1): it says
where it listens once it does; on SIGTERM it accepts no new connection, lets a request in
flight finish (or, past `server.shutdown_timeout`, aborts it) and exits 0, with one worker
process and with several.

The request in flight is a POST whose body the client sends in two parts, the second after the
signal: the server has the request, not yet all of it, and must wait for the rest.
"""

from __future__ import annotations

import base64
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from connector.collections import inbox_collection_id
from tests.conftest import password_for
from tests.serving import ServeProcess, start_serve
from tests.test_cli import write_config

BODY = b'{"type": "bundle", "id": "bundle--6d7d7a4c-3c5f-4e5e-9f0e-1d0a2b3c4d5e", "objects": []}'


def _open_request(served: ServeProcess) -> socket.socket:
    """A POST to researcher-1's inbox with all but the last 10 bytes of its body sent."""
    parts = urlsplit(served.url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    auth = base64.b64encode(f"researcher-1:{password_for('researcher-1')}".encode()).decode()
    head = (
        f"POST /meldpunt/collections/{inbox_collection_id('researcher-1')}/objects/ HTTP/1.1\r\n"
        f"Host: {parts.netloc}\r\nAuthorization: Basic {auth}\r\n"
        "Accept: application/taxii+json;version=2.1\r\n"
        "Content-Type: application/taxii+json;version=2.1\r\n"
        f"Content-Length: {len(BODY)}\r\n\r\n"
    )
    sock.sendall(head.encode() + BODY[:-10])
    return sock


def _response(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _refused(served: ServeProcess) -> bool:
    parts = urlsplit(served.url)
    try:
        socket.create_connection((parts.hostname, parts.port), timeout=2).close()
    except OSError:
        return True
    return False


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_finishes_the_request_in_flight_and_exits_0(tmp_path: Path, workers: str) -> None:
    config = write_config(tmp_path)
    served = start_serve(config, tmp_path, "--workers", workers)
    sock = _open_request(served)
    time.sleep(1.0)  # the request reaches the application, which waits for the rest of the body
    served.process.send_signal(15)
    time.sleep(1.5)
    assert served.process.poll() is None, "the server exited with a request in flight"
    assert _refused(served), "a new connection was accepted after SIGTERM"
    sock.sendall(BODY[-10:])
    answer = _response(sock)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 202"), answer[:300]
    code, out, err = served.stop(timeout=30)
    assert code == 0, f"exit {code}\n{out}\n{err}"
    assert "stopped" in out and "requests in flight were finished" in out, out
    if workers == "1":
        assert "stopped on SIGTERM" in out


def test_a_request_still_open_after_the_shutdown_timeout_is_aborted_and_the_server_exits_0(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path)
    raw = yaml.safe_load(config.read_text(encoding="utf-8"))
    raw.setdefault("server", {})["shutdown_timeout"] = 1
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    served = start_serve(config, tmp_path)
    sock = _open_request(served)
    time.sleep(1.0)
    began = time.monotonic()
    served.process.send_signal(15)
    code, out, err = served.stop(timeout=30)  # the client never sends the rest
    assert code == 0, f"exit {code}\n{out}\n{err}"
    assert time.monotonic() - began < 10
    sock.settimeout(5)
    assert not _response(sock).startswith(b"HTTP/1.1 2"), "an unfinished request was answered as done"
    sock.close()


def test_the_startup_line_says_where_it_listens(tmp_path: Path) -> None:
    served = start_serve(write_config(tmp_path), tmp_path)
    assert served.url.startswith("http://127.0.0.1:")
    code, _out, _err = served.stop()
    assert code == 0
