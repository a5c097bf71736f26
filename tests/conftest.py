"""Shared pytest fixtures: no test may reach a network."""

from __future__ import annotations

import socket

import pytest


class NetworkBlockedError(RuntimeError):
    """Raised when a test tries to open a network connection."""


@pytest.fixture(autouse=True)
def _block_network(monkeypatch):
    """Make every socket connection attempt fail (AF_UNIX sockets stay usable)."""

    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def _guard(self, address, *args, **kwargs):
        if self.family == getattr(socket, "AF_UNIX", None):
            return real_connect(self, address, *args, **kwargs)
        raise NetworkBlockedError(f"network access is blocked in tests (tried {address!r})")

    def _guard_ex(self, address, *args, **kwargs):
        if self.family == getattr(socket, "AF_UNIX", None):
            return real_connect_ex(self, address, *args, **kwargs)
        raise NetworkBlockedError(f"network access is blocked in tests (tried {address!r})")

    def _no_create_connection(address, *args, **kwargs):
        raise NetworkBlockedError(f"network access is blocked in tests (tried {address!r})")

    monkeypatch.setattr(socket.socket, "connect", _guard)
    monkeypatch.setattr(socket.socket, "connect_ex", _guard_ex)
    monkeypatch.setattr(socket, "create_connection", _no_create_connection)
    yield
