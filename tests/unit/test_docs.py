"""The docs cannot drift from the code.

- docs/configuration.md holds a reference generated from `pyops.config.described_keys()`;
  every key must appear, and the generated block must equal what the code gives today.
  Regenerate it with:  .venv/bin/python tests/unit/test_docs.py > /tmp/ref.md
  and paste it between the BEGIN/END markers.
- Every TOML example in the docs must pass `pyops.config.parse`.
- Every error message the operator's guide quotes must still exist in pyops' source.
"""

from __future__ import annotations

import re
import tomllib
import typing
from dataclasses import MISSING, Field, fields
from pathlib import Path
from typing import Any

import pytest

from pyops import config

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
CONFIGURATION = DOCS / "configuration.md"
GUIDE = DOCS / "operators-guide.md"
BEGIN = "<!-- BEGIN generated from pyops.config.described_keys(): do not edit by hand -->"
END = "<!-- END generated -->"
SECTION_TITLES = {
    "repository": "[repository]",
    "retention": "[retention]",
    "compression": "[compression]",
    "encryption": "[encryption]",
    "offsite": "[offsite]",
    "targets[]": "[[targets]]",
    "maintenance": "[maintenance] and [[maintenance.cleanup]]",
    "health": "[health]",
    "notify": "[notify]",
    "metrics": "[metrics]",
}


# --------------------------------------------------------------------------- rendering


def _fields_for(key: str) -> list[tuple[str, Field[Any]]]:
    """(target type or '', dataclass field) behind a described key."""
    section, _, name = key.rpartition(".")
    if section == "targets[]":
        return [
            (kind, f)
            for kind, cls in config.TARGET_TYPES.items()
            for f in fields(cls)
            if f.name == name
        ]
    if section == "maintenance.cleanup[]":
        return [("", f) for f in fields(config.CleanupRule) if f.name == name]
    cls = typing.get_type_hints(config.Config)[section]
    return [("", f) for f in fields(cls) if f.name == name]


def _default(key: str, described: str) -> str:
    found = _fields_for(key)
    f = found[0][1]
    if f.default is MISSING and f.default_factory is MISSING:
        return "**required**"
    if described == "":
        return "`[]`"
    if described == "None":
        return "unset"
    match = re.fullmatch(r"\w*Path\('(.*)'\)", described)
    if match:
        return f'`"{match[1]}"`'
    if described.startswith("'"):
        return '`"' + described[1:-1] + '"`'
    return f"`{described}`"


def _help(key: str, described: str) -> str:
    found = _fields_for(key)
    kinds = [kind for kind, _ in found]
    if key.startswith("targets[]."):
        # described_keys() keeps the first target type's help for shared keys
        helps = list(dict.fromkeys(f.metadata.get("help", "") for _, f in found))
        text = " | ".join(helps) if key == "targets[].type" else helps[0]
        if len(kinds) < len(config.TARGET_TYPES):
            text = f"*{', '.join(kinds)}*: {text}"
        return _escape(text)
    return _escape(described)


def _escape(text: str) -> str:
    """Table-safe Markdown: `|` splits cells, `<path>` would be taken for HTML."""
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def render_reference() -> str:
    out: list[str] = [BEGIN, ""]
    current = ""
    for key, default, help_ in config.described_keys():
        section = key.split(".", 1)[0]
        if section != current:
            if current:
                out.append("")
            current = section
            out += [
                f"### `{SECTION_TITLES.get(section, section)}`",
                "",
                "| key | default | meaning |",
                "|---|---|---|",
            ]
        out.append(f"| `{key}` | {_default(key, default)} | {_help(key, help_)} |")
    out += ["", END]
    return "\n".join(out)


def generated_block(text: str) -> str:
    assert BEGIN in text and END in text, f"{CONFIGURATION}: generated block markers missing"
    start = text.index(BEGIN)
    return text[start : text.index(END, start) + len(END)]


# --------------------------------------------------------------------------- tests


def test_every_described_key_is_in_configuration_md() -> None:
    text = CONFIGURATION.read_text(encoding="utf-8")
    missing = [key for key, _, _ in config.described_keys() if f"| `{key}` |" not in text]
    assert not missing, f"docs/configuration.md lacks {missing}; regenerate (see this file)"


def test_configuration_reference_is_current() -> None:
    text = CONFIGURATION.read_text(encoding="utf-8")
    assert generated_block(text) == render_reference(), (
        "docs/configuration.md is out of date: run "
        "`.venv/bin/python tests/unit/test_docs.py` and paste its output over the generated block"
    )


def test_described_keys_cover_every_config_field() -> None:
    described = {key for key, _, _ in config.described_keys()}

    def walk(cls: Any, prefix: str) -> list[str]:
        keys = []
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            if f.name == "source":
                continue
            hint = hints[f.name]
            if prefix == "targets[]." and f.name == "hooks":  # [hooks]' keys, per target
                keys.append("targets[].hooks")
            elif isinstance(hint, type) and hasattr(hint, "__dataclass_fields__"):
                keys += walk(hint, f"{prefix}{f.name}.")
            elif f.name == "targets":
                for tcls in config.TARGET_TYPES.values():
                    keys += walk(tcls, "targets[].")
            elif f.name == "cleanup":
                keys += walk(config.CleanupRule, f"{prefix}cleanup[].")
            else:
                keys.append(f"{prefix}{f.name}")
        return keys

    assert set(walk(config.Config, "")) == described


def test_every_config_field_has_help() -> None:
    for key, _, help_ in config.described_keys():
        assert help_.strip(), f"{key} has no help text"


def test_described_type_help_names_every_target_type() -> None:
    help_ = {key: h for key, _, h in config.described_keys()}["targets[].type"]
    for kind in config.TARGET_TYPES:
        assert kind in help_


def _toml_blocks(path: Path) -> list[str]:
    return re.findall(r"```toml\n(.*?)```", path.read_text(encoding="utf-8"), re.S)


@pytest.mark.parametrize("doc", ["configuration.md", "operators-guide.md", "restore-runbook.md"])
def test_toml_examples_are_valid(doc: str) -> None:
    for block in _toml_blocks(DOCS / doc):
        data = tomllib.loads(block)
        if "targets" in data or "repository" in data or "encryption" in data:
            config.parse(data)


def test_configuration_holds_the_full_example() -> None:
    blocks = [tomllib.loads(b) for b in _toml_blocks(CONFIGURATION)]
    full = [b for b in blocks if {"repository", "targets", "offsite", "health"} <= set(b)]
    assert full, "docs/configuration.md: the full example is missing"
    cfg = config.parse(full[0])
    assert [t.type for t in cfg.targets] == ["postgres", "sqlite", "files"]


# Fragments of every message the operator's guide quotes; each must be in the guide and
# in pyops' source, so a reworded message fails here until the guide follows.
QUOTED_MESSAGES = [
    "not found (looked for",
    "install it, e.g. `apt-get install",
    "but the server of target",
    "or set pg_bin_dir",
    "password rejected for",
    "~/.pgpass or PGPASSFILE",
    "is not set",
    "cannot reach PostgreSQL at",
    "is the server running and the dsn right?",
    "database missing at",
    "does not exist: create it and import keys",
    "gpg recipient key",
    "--import backup-public.asc)",
    "extend it (gpg --quick-set-expire) or configure a new recipient",
    "check encryption.passphrase_file and its permissions (0600, owned by the pyops user)",
    "the secret key is not in",
    "(gpg --import backup-secret.asc) and run again",
    ": wrong passphrase",
    "unexpected error:",
    "the partial file was removed; free space or move the repository, then run again",
    "another pyops run holds",
    "Let it finish, or check that process",
    "fix the clock (NTP) before backing up",
    "exited with status",
    "was killed by",
    "does not exist: check the target's path",
    "does not exist; fix targets.paths",
    "sha256 mismatch",
    "(truncated or replaced)",
    "the file was altered or damaged",
    "Check the network, endpoint_url and credentials; local backups stay and",
    "refusing to restore without confirmation: run on a terminal",
    "duplicate target name",
    "no such file (create one with `pyops init`)",
    "contains a password; use password_env, ~/.pgpass or PGPASSFILE instead",
    "removing leftover of an interrupted run",
    # PostgreSQL backups (issue 10 rows 3-5)
    "is locked by another session",
    "holds an ACCESS EXCLUSIVE lock on",
    "waits for an ACCESS EXCLUSIVE lock on",
    "Let it finish and run the backup again",
    "end the session holding the lock: SELECT pg_terminate_backend(",
    "A backup reads every table (pg_dump, and pyops' row count for the manifest)",
    "connections at once for a consistent snapshot (pyops' snapshot session, which",
    "has reached its CONNECTION LIMIT",
    "pyops' snapshot session was canceled while reading",
    "pyops sets statement_timeout = 0 for that session",
    "--latest needs --target: the repository holds backups of several targets",
    "--latest --remote needs --target: the bucket holds backups of several targets",
    "--target: unknown target",
    "one condition, without ';'",
    "is a files target: cleanup deletes rows from postgres and sqlite targets only",
    "must not be above health.",
]


def _source_text() -> str:
    text = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "pyops").rglob("*.py"))
    # join implicitly concatenated string literals split over lines
    return re.sub(r"\"\s*\n\s*f?\"", "", text)


@pytest.mark.parametrize("fragment", QUOTED_MESSAGES)
def test_quoted_messages_exist(fragment: str) -> None:
    assert fragment in GUIDE.read_text(encoding="utf-8"), "not quoted in the guide"
    assert fragment in _source_text(), "no longer in pyops: update the operator's guide"


def test_docs_link_to_each_other() -> None:
    for doc in DOCS.glob("*.md"):
        for target in re.findall(r"\]\(([a-z-]+\.md)\)", doc.read_text(encoding="utf-8")):
            assert (DOCS / target).exists(), f"{doc.name} links to missing {target}"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for target in re.findall(r"\]\(docs/([a-z-]+\.md)\)", readme):
        assert (DOCS / target).exists(), f"README links to missing docs/{target}"


if __name__ == "__main__":
    print(render_reference())
