"""Just enough of the Redis protocol (RESP2) over a raw socket for a health probe:
no client package to install, and the probe measures the server, not a library."""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

MAX_BULK = 64 << 20


class RespError(Exception):
    """The server answered with an error (-ERR ...), or spoke something else."""


@dataclass(frozen=True)
class RedisUrl:
    host: str
    port: int
    db: int
    username: str | None
    password: str | None
    tls: bool

    @classmethod
    def parse(cls, url: str) -> RedisUrl:
        parts = urlsplit(url)
        path = parts.path.strip("/")
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 6379,
            db=int(path) if path.isdigit() else 0,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            tls=parts.scheme == "rediss",
        )

    def redacted(self) -> str:
        """For messages: never the password."""
        auth = f"{self.username or ''}:***@" if self.password else ""
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{auth}{self.host}:{self.port}/{self.db}"


class Connection:
    def __init__(
        self, url: RedisUrl, timeout: float, context: ssl.SSLContext | None = None
    ) -> None:
        raw = socket.create_connection((url.host, url.port), timeout=timeout)
        if url.tls:
            raw = (context or ssl.create_default_context()).wrap_socket(
                raw, server_hostname=url.host
            )
        self.sock = raw
        self.file = raw.makefile("rb")
        if url.password is not None:
            args = [url.username, url.password] if url.username else [url.password]
            self.call("AUTH", *args)
        if url.db:
            self.call("SELECT", str(url.db))

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, *args: str | bytes) -> Any:
        """Send one command as an array of bulk strings; return the decoded reply."""
        out = [b"*%d\r\n" % len(args)]
        for arg in args:
            data = arg.encode() if isinstance(arg, str) else arg
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self.sock.sendall(b"".join(out))
        return self._read()

    def _line(self) -> bytes:
        line = self.file.readline(1 << 16)
        if not line.endswith(b"\r\n"):
            if not line:
                raise RespError("connection closed by the server")
            raise RespError(f"not a Redis reply: {line[:40]!r}")
        return line[:-2]

    def _read(self) -> Any:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RespError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            if size > MAX_BULK:
                raise RespError(f"reply of {size} bytes is too large")
            data = self.file.read(size + 2)
            if len(data) != size + 2:
                raise RespError("connection closed mid-reply")
            return data[:-2]
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self._read() for _ in range(count)]
        raise RespError(f"not a Redis reply: {line[:40]!r}")


def parse_info(text: bytes) -> dict[str, str]:
    """INFO's `key:value` lines."""
    out = {}
    for line in text.decode(errors="replace").splitlines():
        if line and not line.startswith("#") and ":" in line:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out
