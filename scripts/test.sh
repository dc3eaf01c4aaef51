#!/usr/bin/env bash
# Runs the whole test suite. Without EMBQ_TEST_DATABASE_URL it starts a throwaway
# PostgreSQL 15 and PgBouncer on loopback for the run and removes them afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/pg.sh
source scripts/lib/pg.sh
if [ -z "${EMBQ_TEST_DATABASE_URL:-}" ]; then
  pg_start
  trap pg_stop EXIT
fi
cargo test --workspace "$@"
