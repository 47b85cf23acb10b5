"""The socket listing the end-to-end test holds the embedded stack to loopback with
(tests/support/sockets.py), on sockets this test opens itself and on a child process's."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from tests.support.sockets import Listener, listening_sockets


def _listen(family: int, host: str) -> socket.socket:
    s = socket.socket(family, socket.SOCK_STREAM)
    s.bind((host, 0))
    s.listen()
    return s


def test_it_reports_loopback_and_any_interface_listeners_of_a_process_apart():
    with _listen(socket.AF_INET, "127.0.0.1") as local, _listen(socket.AF_INET, "0.0.0.0") as anywhere:
        here, there = local.getsockname(), anywhere.getsockname()
        with socket.create_connection(here):  # a connected socket is not a listener
            found = {(x.ip, x.port): x for x in listening_sockets([os.getpid()])}
        assert found[here].loopback and not found[there].loopback
        # (the test process may run servers of other tests as children: their sockets are theirs)
        assert found[here].pid == found[there].pid == os.getpid()
        assert [x.port for x in found.values()].count(here[1]) == 1
    assert here not in {(x.ip, x.port) for x in listening_sockets([os.getpid()])}, "a closed socket is gone"


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6 on this host")
def test_ipv6_loopback_is_loopback_and_the_ipv6_wildcard_is_not():
    try:
        local, anywhere = _listen(socket.AF_INET6, "::1"), _listen(socket.AF_INET6, "::")
    except OSError as exc:
        pytest.skip(f"IPv6 sockets cannot be bound here: {exc}")
    with local, anywhere:
        found = {x.port: x for x in listening_sockets([os.getpid()])}
        assert found[local.getsockname()[1]].loopback
        assert not found[anywhere.getsockname()[1]].loopback


def test_it_follows_the_children_of_a_process():
    """A service's listener may be a child's (a server's worker): the listing of the parent's pid
    holds it."""
    code = "import socket,sys; s=socket.socket(); s.bind(('0.0.0.0', 0)); s.listen(); print(s.getsockname()[1], flush=True); sys.stdin.read()"
    parent = subprocess.Popen(
        [sys.executable, "-c", f"import subprocess,sys; subprocess.run([sys.executable, '-c', {code!r}])"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = int(parent.stdout.readline())  # the grandchild has bound by the time it prints
        [child] = [x for x in listening_sockets([parent.pid]) if x.port == port]
        assert child.pid != parent.pid and child.ip == "0.0.0.0" and not child.loopback
    finally:
        parent.stdin.close()
        parent.wait(timeout=30)


def test_pids_that_are_gone_are_skipped():
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert listening_sockets([gone.pid]) == []


def test_ipv4_mapped_loopback_counts_as_loopback():
    assert Listener(1, "x", "::ffff:127.0.0.1", 80).loopback
    assert not Listener(1, "x", "::ffff:10.0.0.1", 80).loopback
