"""Which TCP sockets a set of processes listens on: the end-to-end test holds the embedded stack
to loopback with it (every service, and every child a service starts)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class Listener:
    pid: int
    process: str
    ip: str
    port: int

    @property
    def loopback(self) -> bool:
        address = ipaddress.ip_address(self.ip.split("%", 1)[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return address.is_loopback

    def __str__(self) -> str:
        return f"{self.process} (pid {self.pid}) on {self.ip}:{self.port}"


def listening_sockets(pids: Iterable[int]) -> list[Listener]:
    """The listening TCP sockets (IPv4 and IPv6) of `pids` and of all their descendants. A process
    that ends while it is looked at is skipped; `pids` that do not exist are skipped too."""
    processes: dict[int, psutil.Process] = {}
    for pid in pids:
        try:
            root = psutil.Process(pid)
            processes |= {p.pid: p for p in [root, *root.children(recursive=True)]}
        except psutil.NoSuchProcess:
            continue
    found = set()
    for process in processes.values():
        try:
            name = process.name()
            sockets = process.net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            continue
        found |= {Listener(process.pid, name, s.laddr.ip, s.laddr.port) for s in sockets if s.status == psutil.CONN_LISTEN}
    return sorted(found, key=lambda x: (x.pid, x.port, x.ip))
