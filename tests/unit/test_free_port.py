"""`free_port` (the embedded servers', the tests' and the bench's): a port handed out twice, or one from the
kernel's range for outgoing connections, is a server that cannot bind ("Address already in use") when a
client's connect or another free_port took it first."""

from __future__ import annotations

import socket

from stocksync.embedded.processes import _outgoing_ports_start, free_port


def test_free_ports_are_distinct_bindable_and_below_the_outgoing_range() -> None:
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    assert all(10_000 <= port < _outgoing_ports_start() for port in ports)
    for port in ports[:20]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_port_in_use_is_not_handed_out() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", free_port()))
        listener.listen()
        taken = listener.getsockname()[1]
        assert taken not in {free_port() for _ in range(300)}
