"""zstd / gzip command lines, and the file-name layer each adds."""

from __future__ import annotations

from pyops.execute import Stage

EXTENSIONS = {"zstd": "zst", "gzip": "gz"}


def compress(algorithm: str, level: int, threads: int) -> list[Stage]:
    if algorithm == "zstd":
        return [Stage("zstd", ("zstd", "-q", "-c", f"-{level}", f"-T{threads}"))]
    if algorithm == "gzip":
        return [Stage("gzip", ("gzip", "-c", "-n", f"-{level}"))]
    return []


def decompress(algorithm: str) -> list[Stage]:
    if algorithm == "zstd":
        return [Stage("zstd -d", ("zstd", "-q", "-d", "-c"))]
    if algorithm == "gzip":
        return [Stage("gzip -d", ("gzip", "-d", "-c"))]
    return []


def extension(algorithm: str) -> str | None:
    return EXTENSIONS.get(algorithm)
