"""The commented starter config `pyops init` writes."""

from __future__ import annotations

import socket
from pathlib import Path

TEMPLATE = """\
# pyops configuration. Reference: docs/configuration.md. Check with `pyops config check`.
# Secrets never go in this file: database passwords come from the environment
# (password_env) or ~/.pgpass; gpg passphrases from passphrase_file.

[repository]
path = "{repo}"             # created 0700; backups written 0600
host = "{host}"
key_file = "{key}"  # authenticates manifests: keep a copy with the gpg secret key

[retention]                 # complete backups kept per target and tier
daily = 7
weekly = 5
monthly = 12

[compression]
algorithm = "zstd"          # zstd | gzip | none
level = 3
threads = 0                 # zstd -T; 0 = all cores

[encryption]
mode = "none"               # none | gpg-public | gpg-symmetric
# recipients = ["backup@example.org"]        # gpg-public: only the PUBLIC key is needed here
# gnupghome = "/etc/pyops/gnupg"
# passphrase_file = "/etc/pyops/passphrase"  # gpg-symmetric (0600, read via a file descriptor)

# [[targets]]
# name = "app-db"
# type = "postgres"
# dsn = "postgresql://app@127.0.0.1:5432/app"  # no password here
# password_env = "APP_DB_PASSWORD"
# format = "custom"                            # custom | plain | directory | tar

# [[targets]]
# name = "app-sqlite"
# type = "sqlite"
# path = "/srv/app/db.sqlite3"

# [[targets]]
# name = "media"
# type = "files"
# paths = ["/srv/app/media"]
# exclude = ["*.tmp"]
"""


def starter_config(repo: Path, key: Path) -> str:
    return TEMPLATE.format(repo=repo, host=socket.gethostname(), key=key)
