#!/usr/bin/env bash
# One timed unit of the SQLite bulk-enqueue benchmark (BENCHMARKS.md, "SQLite bulk enqueue"):
# a fresh SQLite file, `embq migrate`, then `embq enqueue` of a JSONL file, from the file or piped
# through standard input. Pair two builds with an A/B timer, e.g.
#   farm-bench -n 3 --vs 'scripts/bench/sqlite-enqueue.sh /tmp/embq-old jobs.jsonl' -- scripts/bench/sqlite-enqueue.sh /tmp/embq-new jobs.jsonl
# The 200,000-job file (24 MB) is the one scripts/bench-drain.sh writes:
#   python3 -c 'import json; [print(json.dumps({"source_type": "doc", "source_id": str(i), "text": f"receipt {i}: coffee beans, oat milk, total {i % 97}.50 paid by card"})) for i in range(200000)]' > jobs.jsonl
#   usage: sqlite-enqueue.sh BIN FILE [stdin]
set -euo pipefail
bin=$1 file=$2 how=${3:-file}
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
export DATABASE_URL="sqlite://$d/q.db"
"$bin" migrate >/dev/null
if [ "$how" = stdin ]; then
  "$bin" enqueue <"$file" >/dev/null
else
  "$bin" enqueue "$file" >/dev/null
fi
