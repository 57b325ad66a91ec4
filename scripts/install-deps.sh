#!/usr/bin/env bash
# Install the system tools pyops drives, when missing (Debian/Ubuntu, as root).
# Used by `make test` and `make demo`; safe to run again.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: scripts/install-deps.sh [--check]
Installs postgresql (server + client + contrib), gnupg, zstd, sqlite3, tar, gzip,
systemd (for systemd-analyze), shellcheck, redis-server (health tests) and pgbackrest
(pgbackrest targets) with apt-get when any is missing; and chromium (headless: the
test of `pyops fleet --format html` renders the page).
  --check   only report what is missing; exit 1 if anything is
USAGE
}

check_only=0
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  --check) check_only=1 ;;
  "") ;;
  *) usage >&2; exit 2 ;;
esac

missing=()
have() { command -v "$1" >/dev/null 2>&1; }
pg_server() { ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || have initdb; }
pg_contrib() { ls /usr/share/postgresql/*/extension/pg_stat_statements.control >/dev/null 2>&1; }

have pg_dump || missing+=(postgresql-client)
pg_server || missing+=(postgresql)
pg_contrib || missing+=(postgresql-contrib)
have gpg || missing+=(gnupg)
have zstd || missing+=(zstd)
have sqlite3 || missing+=(sqlite3)
have tar || missing+=(tar)
have gzip || missing+=(gzip)
have systemd-analyze || missing+=(systemd)
have shellcheck || missing+=(shellcheck)
have redis-server || missing+=(redis-server)
have pgbackrest || missing+=(pgbackrest)
have chromium || missing+=(chromium)  # renders `pyops fleet --format html` in tests/fleet

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$check_only" -eq 1 ]; then
  echo "missing packages: ${missing[*]}" >&2
  exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "missing packages: ${missing[*]}; run as root or: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
echo "installing: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
