"""`<engine> exec` command lines: a tool run inside a running container.

Never `-t`: a TTY turns the tool's output into terminal output (LF -> CRLF, a
closed stdin never reaches it), which corrupts a binary dump. Each variable of the
stage's environment is named with `-e NAME` and no value: the engine reads the
value from its own environment (Stage.env reaches the engine process alone), so a
password is never on any command line.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from pyops.execute import Stage

ENGINES = ("docker", "podman")
# docker's and podman's rule for a container name; a full or short ID matches it too
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")


@dataclass(frozen=True)
class Exec:
    """Where a tool runs: `engine` (docker or podman) and the container's name."""

    engine: str
    container: str

    def argv(self, command: Sequence[str], env_names: Sequence[str] = ()) -> tuple[str, ...]:
        """`<engine> exec -i [-e NAME]... <container> <command>`."""
        passed = (arg for name in sorted(env_names) for arg in ("-e", name))
        return (self.engine, "exec", "-i", *passed, self.container, *command)

    def wrap(self, stage: Stage) -> Stage:
        """The same stage run in the container, under the same name: its environment
        stays the engine's own and is passed in by name."""
        return replace(stage, argv=self.argv(stage.argv, tuple(stage.env)), cwd=None)

    def __str__(self) -> str:
        return f"container {self.container} ({self.engine})"


def inside(stage: Stage, where: Exec | None) -> Stage:
    """`stage` as it runs: on this host, or in the container."""
    return where.wrap(stage) if where else stage
