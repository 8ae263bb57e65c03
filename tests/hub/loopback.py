"""A guard that makes any connection off 127.0.0.1 fail loudly (tests of the Hub must never
reach the internet, whatever huggingface_hub would like to call)."""

from __future__ import annotations

import ipaddress
import socket

ATTEMPTS: list[str] = []
_ORIGINAL = {"connect": socket.socket.connect, "connect_ex": socket.socket.connect_ex}


def _allowed(address) -> bool:
    if isinstance(address, (str, bytes)):  # a Unix socket: not the network
        return True
    host = address[0]
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _guarded(name: str):
    original = _ORIGINAL[name]

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _allowed(address):
            ATTEMPTS.append(f"{address}")
            raise ConnectionRefusedError(f"test guard: no traffic off 127.0.0.1 ({address})")
        return original(self, address)

    return connect


def install() -> None:
    """Refuse every TCP connection to a non-loopback address from now on (and record it)."""
    socket.socket.connect = _guarded("connect")
    socket.socket.connect_ex = _guarded("connect_ex")


def uninstall() -> None:
    socket.socket.connect = _ORIGINAL["connect"]
    socket.socket.connect_ex = _ORIGINAL["connect_ex"]
