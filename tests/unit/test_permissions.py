"""pyops.permissions: which loose modes are refused as root, which only warned about."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyops import config
from pyops.errors import ConfigError
from pyops.permissions import check_path, enforce, unsafe_paths

NOBODY = 65534
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")


def setup(tmp_path: Path, *, key_mode: int = 0o600) -> config.Config:
    repo = tmp_path / "repo"
    repo.mkdir(mode=0o700)
    key = tmp_path / "repository.key"
    key.write_text("00" * 32 + "\n")
    key.chmod(key_mode)
    cfg_path = tmp_path / "pyops.toml"
    cfg_path.write_text(f'[repository]\npath = "{repo}"\nkey_file = "{key}"\n')
    cfg_path.chmod(0o600)
    return config.load(cfg_path)


def test_private_files_have_nothing_to_say(tmp_path: Path) -> None:
    assert unsafe_paths(setup(tmp_path)) == []


def test_a_readable_key_is_named_with_its_fix(tmp_path: Path) -> None:
    cfg = setup(tmp_path, key_mode=0o644)
    (problem,) = unsafe_paths(cfg)
    assert problem.key == "repository.key_file"
    assert "readable by others" in problem.problem and problem.fix.startswith("chmod 0600")
    assert problem.refuse


def test_a_group_readable_key_is_fine(tmp_path: Path) -> None:
    """root:pyops 0640, as install.sh leaves it: the service reads it through its group."""
    assert unsafe_paths(setup(tmp_path, key_mode=0o640)) == []


def test_a_symlink_is_judged_by_where_it_leads(tmp_path: Path) -> None:
    target = tmp_path / "open"
    target.mkdir()
    target.chmod(0o777)
    link = tmp_path / "link"
    link.symlink_to(target)
    problems = check_path(link, "repository.path", False, os.geteuid())
    assert [p.path for p in problems] == [target]
    assert problems[0].fix == f"chmod 0700 {target}"


def test_a_sticky_world_writable_parent_is_fine(tmp_path: Path) -> None:
    assert check_path(tmp_path / "repo-not-yet", "repository.path", False, 0) == []


@root_only
def test_as_root_a_config_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    cfg = setup(tmp_path)
    assert cfg.source is not None
    os.chown(cfg.source, NOBODY, NOBODY)
    with pytest.raises(ConfigError, match=r"owned by uid 65534.*fix: chown 0"):
        enforce(cfg)


@root_only
def test_as_root_a_repository_owned_by_the_service_user_is_only_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = setup(tmp_path)
    os.chown(cfg.repository.path, NOBODY, NOBODY)
    found = enforce(cfg)
    assert [(p.key, p.refuse) for p in found] == [("repository.path", False)]
    assert "owned by uid 65534" in caplog.text


@root_only
def test_as_root_a_group_writable_repository_is_refused(tmp_path: Path) -> None:
    cfg = setup(tmp_path)
    cfg.repository.path.chmod(0o770)
    with pytest.raises(ConfigError, match=r"repository.path: .* writable by group or others"):
        enforce(cfg)
