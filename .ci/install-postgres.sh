#!/usr/bin/env bash
# Installs PostgreSQL's server binaries (initdb, pg_ctl, postgres) if they are missing, for
# tests/test_libraries.py's asyncpg tests, which start their own server in a temporary
# directory. Idempotent: does nothing when the binaries are already there.
set -euo pipefail
if command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-postgres: PostgreSQL is missing and cannot be installed here (needs root and apt-get);" \
        "the asyncpg tests will be skipped" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends postgresql >/dev/null
echo "install-postgres: installed $(ls -d /usr/lib/postgresql/*/bin | tail -1)"
