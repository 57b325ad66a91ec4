"""The docs cannot point at things that do not exist.

- every relative link in README.md and docs/*.md leads to an existing file
  (anchors are not checked);
- every `pyops <command> [<subcommand>]` in a fenced code block of README.md or
  docs/*.md names a command the CLI has, so a renamed or planned command cannot
  hide in an example an operator will copy;
- every `scripts/*.sh` and every `pyops-*.service|timer` unit named in the docs
  exists (units: in the renderer's output, templates instantiated as systemd does);
- the TOML examples of the operations guides are configs pyops accepts.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from pyops import config
from pyops.cli import cli
from pyops.commands.ops import shipped

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted((ROOT / "docs").glob("*.md"))
README = ROOT / "README.md"
ALL_DOCS = [README, *DOCS]

FENCE = re.compile(r"^([ \t]*)(```|~~~)[^\n]*\n(.*?)^\1\2[ \t]*$", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
SCRIPT = re.compile(r"\bscripts/[A-Za-z0-9_.-]+\.sh\b")
UNIT = re.compile(r"\bpyops-[a-z-]+(?:@[A-Za-z0-9%_-]*)?\.(?:service|timer)\b")
COMMAND_WORD = re.compile(r"^[a-z][a-z0-9-]*$")
GLOBAL_WITH_VALUE = {"--config", "--log-format"}


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(ROOT)) for p in paths]


def fenced_blocks(text: str) -> list[str]:
    return [m.group(3) for m in FENCE.finditer(text)]


def prose(text: str) -> str:
    """The text outside code: links inside code blocks or spans are not links."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


# --------------------------------------------------------------------------- links


def relative_links(text: str) -> list[str]:
    out = []
    for target in LINK.findall(prose(text)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            continue  # http:, https:, mailto:, ...; in-page anchors
        out.append(target.split("#", 1)[0])
    return out


@pytest.mark.parametrize("doc", ALL_DOCS, ids=_ids(ALL_DOCS))
def test_relative_links_point_to_existing_files(doc: Path) -> None:
    missing = [
        t for t in relative_links(doc.read_text(encoding="utf-8")) if not (doc.parent / t).exists()
    ]
    assert not missing, f"{doc.relative_to(ROOT)} links to missing files: {missing}"


def test_link_extraction_finds_and_skips_the_right_things() -> None:
    text = (
        "See [a](docs/a.md#x), ![img](img/b.png), [web](https://example.org), "
        "[anchor](#here), [mail](mailto:x@example.org) and `[not](a/link.md)`.\n"
        "```sh\necho [nor](this.md)\n```\n"
    )
    assert relative_links(text) == ["docs/a.md", "img/b.png"]


# --------------------------------------------------------------------------- commands


WRAPPERS = {"sudo": {"-u", "-g", "-C"}, "runuser": {"-u", "-g"}, "env": {"-u"}, "nice": {"-n"}}
PLAIN_WRAPPERS = {"$", "time", "exec", "command", "doas"}
OPERATORS = {";", "&&", "||", "|", "&", "(", ")", "$(", "`"}


def _is_pyops(token: str) -> bool:
    word = token.strip("\"'")
    return word in ("pyops", "$pyops", "${pyops}", "$PYOPS", "${PYOPS}") or word.endswith(
        "/bin/pyops"
    )


def _tokens(line: str) -> list[str]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|()")
    lexer.whitespace_split = True
    try:
        return list(lexer)
    except ValueError:  # unbalanced quotes in prose-like lines: fall back to plain words
        return re.findall(r"[;&|()]+|[^\s;&|()]+", line.split("#", 1)[0])


def _simple_commands(line: str) -> list[list[str]]:
    out: list[list[str]] = [[]]
    for token in _tokens(line):
        if token in OPERATORS or set(token) <= set(";&|()"):
            out.append([])
        else:
            out[-1].append(token)
    return [c for c in out if c]


def _invocation(words: list[str]) -> list[str] | None:
    """The arguments after `pyops` when this simple command runs pyops, else None:
    `pyops` must be in command position (after assignments, a prompt, sudo/env/...),
    so `ruff check pyops tests` or `usermod -aG app pyops` are not invocations."""
    i = 0
    while i < len(words):
        word = words[i]
        name, eq, value = word.partition("=")
        if eq and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            if _is_pyops(value):  # ExecStart=/opt/pyops/bin/pyops ...
                return words[i + 1 :]
            i += 1
        elif word in PLAIN_WRAPPERS:
            i += 1
        elif word in WRAPPERS:
            i += 1
            while i < len(words) and words[i].startswith("-"):
                i += 2 if words[i] in WRAPPERS[word] else 1
        else:
            return words[i + 1 :] if _is_pyops(word) else None
    return None


def commands_in(block: str) -> list[tuple[str, ...]]:
    """(command,) or (group, subcommand) for each pyops invocation in a code block."""
    found: list[tuple[str, ...]] = []
    for line in block.replace("\\\n", " ").splitlines():
        for words in _simple_commands(line):
            args = _invocation(words)
            if args is None:
                continue
            j = 0
            while j < len(args) and args[j].startswith("-"):
                j += 2 if args[j] in GLOBAL_WITH_VALUE else 1
            rest = args[j : j + 2]
            if rest and COMMAND_WORD.match(rest[0]):
                named = [rest[0]]
                if len(rest) > 1 and COMMAND_WORD.match(rest[1]):
                    named.append(rest[1])
                found.append(tuple(named))
    return found


def _command(group: click.Group, name: str) -> click.Command | None:
    """Through click's own lookup, so lazily loaded commands count too."""
    return group.get_command(click.Context(group), name)


def unknown_commands(invocations: list[tuple[str, ...]]) -> list[str]:
    bad = []
    for words in invocations:
        command = _command(cli, words[0])
        if command is None:
            bad.append(words[0])
        elif isinstance(command, click.Group) and (
            len(words) < 2 or _command(command, words[1]) is None
        ):
            bad.append(" ".join(words))
    return bad


def test_cli_help_lists_every_top_level_command() -> None:
    """The commands checked against are the ones `pyops --help` shows."""
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0, result.output
    listed = set(re.findall(r"^  ([a-z][a-z-]*)\s", result.output, re.M))
    known = cli.list_commands(click.Context(cli))
    visible = {n for n in known if not getattr(_command(cli, n), "hidden", True)}
    assert {"backup", "restore", "drill", "sync", "systemd", "schedule"} <= visible <= listed


@pytest.mark.parametrize("doc", ALL_DOCS, ids=_ids(ALL_DOCS))
def test_commands_in_code_blocks_exist(doc: Path) -> None:
    invocations = [
        c for b in fenced_blocks(doc.read_text(encoding="utf-8")) for c in commands_in(b)
    ]
    bad = unknown_commands(invocations)
    assert not bad, f"{doc.relative_to(ROOT)} shows commands pyops does not have: {bad}"


def test_the_docs_show_commands_at_all() -> None:
    """Guards the check above against an extractor that silently finds nothing."""
    found = {
        c[0]
        for d in ALL_DOCS
        for b in fenced_blocks(d.read_text(encoding="utf-8"))
        for c in commands_in(b)
    }
    assert {"backup", "restore", "drill", "sync", "systemd"} <= found


def test_command_extraction_catches_a_made_up_command() -> None:
    block = (
        "$ pyops --config /etc/pyops/pyops.toml frobnicate --now\n"
        "sudo -u pyops /opt/pyops/bin/pyops backup   # pyops comment words\n"
        "ExecStart=/opt/pyops/bin/pyops --log-format text drill --remote\n"
        "PYOPS_CONFIG=x pyops systemd explode && pyops schedule run\n"
        "install -d -m 0700 /etc/pyops/gnupg; chown pyops:pyops /var/backups/pyops\n"
        "usermod -aG www-data pyops; .venv/bin/ruff check pyops tests\n"
        'python -c "from pyops.commands.ops import shipped"\n'
        "echo it's a prose-like line with pyops words\n"
    )
    invocations = commands_in(block)
    assert invocations == [
        ("frobnicate",),
        ("backup",),
        ("drill",),
        ("systemd", "explode"),
        ("schedule", "run"),
    ]
    assert unknown_commands(invocations) == ["frobnicate", "systemd explode"]


# --------------------------------------------------------------------------- scripts, units


@pytest.mark.parametrize("doc", ALL_DOCS, ids=_ids(ALL_DOCS))
def test_scripts_mentioned_exist(doc: Path) -> None:
    named = set(SCRIPT.findall(doc.read_text(encoding="utf-8")))
    missing = sorted(s for s in named if not (ROOT / s).is_file())
    assert not missing, f"{doc.relative_to(ROOT)} names missing scripts: {missing}"


def unit_exists(name: str, units: set[str]) -> bool:
    if name in units:
        return True
    stem, _, suffix = name.rpartition(".")
    if "@" in stem:  # an instance: its template must exist
        return f"{stem.split('@', 1)[0]}@.{suffix}" in units
    return False


@pytest.mark.parametrize("doc", ALL_DOCS, ids=_ids(ALL_DOCS))
def test_units_mentioned_exist(doc: Path) -> None:
    units = set(shipped())
    named = set(UNIT.findall(doc.read_text(encoding="utf-8")))
    missing = sorted(n for n in named if not unit_exists(n, units))
    assert not missing, f"{doc.relative_to(ROOT)} names units pyops does not render: {missing}"


def test_unit_matching_knows_templates() -> None:
    units = {"pyops-backup@.service", "pyops-backup@auto.timer"}
    assert unit_exists("pyops-backup@daily.service", units)
    assert unit_exists("pyops-backup@auto.timer", units)
    assert not unit_exists("pyops-backup@daily.timer", units)
    assert not unit_exists("pyops-restore.service", units)


# --------------------------------------------------------------------------- TOML examples

OPS_GUIDES = ["offsite.md", "disaster-recovery.md"]  # the ones with TOML examples


@pytest.mark.parametrize("name", OPS_GUIDES)
def test_toml_examples_in_the_operations_guides_parse(name: str) -> None:
    text = (ROOT / "docs" / name).read_text(encoding="utf-8")
    blocks = [m.group(3) for m in FENCE.finditer(text) if "```toml" in m.group(0).split("\n", 1)[0]]
    assert blocks, f"{name} has no TOML example any more: update OPS_GUIDES"
    for block in blocks:
        config.parse(tomllib.loads(block))  # raises ConfigError naming the key
