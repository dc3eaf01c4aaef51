# shellcheck shell=bash
# Sourced by the benchmark scripts: the receipt-like jobs they enqueue, as JSON lines.

# write_jobs N REPEAT FILE: N jobs whose text is one receipt line repeated REPEAT times.
write_jobs() {
  python3 -c "
import json, sys
n, repeat = int(sys.argv[1]), int(sys.argv[2])
for i in range(n):
    t = f'receipt {i}: coffee beans, oat milk, total {i % 97}.50 paid by card'
    print(json.dumps({'source_type': 'doc', 'source_id': str(i), 'text': '. '.join([t] * repeat)}))
" "$1" "$2" >"$3"
}
