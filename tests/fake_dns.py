"""A simulated DNS for tests: answers the event loop's ``getaddrinfo`` for chosen names.

Every resolver in Tessera (``sdk.hostpolicy.resolve_checked``, so ``GuardedResolver``,
``GuardedNetworkBackend`` and the webhook checks) asks ``loop.getaddrinfo``. ``FakeDns.install``
replaces it on the event loop class (so loops made by ``asyncio.run`` in a CLI test see it too):

- a name in ``answers`` resolves to those addresses (an empty list: an answer with none), or
  raises the exception stored there;
- a name in ``hanging`` never answers (for timeouts);
- an IP literal (and ``None``) goes to the real ``getaddrinfo``: servers bind and clients
  connect to loopback as usual; no DNS is involved;
- any other name fails with ``EAI_NONAME``, so nothing in a test reaches the real DNS.

``asked`` records every name lookup, as ``(host, port)``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Any

import pytest

__all__ = ["FakeDns"]

_REAL_GETADDRINFO = asyncio.base_events.BaseEventLoop.getaddrinfo


def _is_literal(host: object) -> bool:
    if host is None:
        return True
    try:
        ipaddress.ip_address(host.decode() if isinstance(host, bytes) else str(host))
    except ValueError:
        return False
    return True


@dataclass
class FakeDns:
    answers: dict[str, list[str] | BaseException] = field(default_factory=dict)
    hanging: set[str] = field(default_factory=set)
    asked: list[tuple[str, int]] = field(default_factory=list)

    @classmethod
    def install(cls, monkeypatch: pytest.MonkeyPatch) -> FakeDns:
        fake = cls()

        async def getaddrinfo(
            loop: asyncio.AbstractEventLoop, host: Any, port: Any, **kwargs: Any
        ) -> list[Any]:
            if _is_literal(host):
                return await _REAL_GETADDRINFO(loop, host, port, **kwargs)
            return await fake.resolve(str(host), int(port or 0), kwargs.get("family", 0))

        monkeypatch.setattr(asyncio.base_events.BaseEventLoop, "getaddrinfo", getaddrinfo)
        return fake

    async def resolve(self, host: str, port: int, family: int) -> list[Any]:
        self.asked.append((host, port))
        if host in self.hanging:
            await asyncio.Event().wait()
        answer = self.answers.get(host, socket.gaierror(socket.EAI_NONAME, "unknown name"))
        if isinstance(answer, BaseException):
            raise answer
        infos: list[Any] = []
        for text in answer:
            v6 = ipaddress.ip_address(text).version == 6
            address_family = socket.AF_INET6 if v6 else socket.AF_INET
            if family not in (socket.AF_UNSPEC, address_family):
                continue
            sockaddr = (text, port, 0, 0) if v6 else (text, port)
            infos.append((address_family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr))
        return infos
