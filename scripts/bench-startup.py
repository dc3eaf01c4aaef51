#!/usr/bin/env python3
"""Start-to-ready time of `embq worker`: from spawning the process to the first 200 on /ready.

Usage: scripts/bench-startup.py BINARY DATABASE_URL [RUNS]   (the database must be migrated)
Prints each run and the median in milliseconds. The provider is EMBEDDING_PROVIDER from the
environment (default hash); set its key and base URL there too, e.g. for openai.
"""
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def one(binary, url):
    health, metrics = free_port(), free_port()
    env = dict(os.environ, DATABASE_URL=url, HEALTH_PORT=str(health), METRICS_PORT=str(metrics),
               EMBEDDING_PROVIDER=os.environ.get("EMBEDDING_PROVIDER", "hash"), RUST_LOG="warn")
    start = time.perf_counter()
    proc = subprocess.Popen([binary, "worker"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = start + 30
        while time.perf_counter() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{health}/ready", timeout=1) as r:
                    if r.status == 200:
                        return (time.perf_counter() - start) * 1000
            except OSError:
                pass
            time.sleep(0.001)
        raise SystemExit("worker never became ready")
    finally:
        proc.terminate()
        proc.wait()


def main():
    binary, url = sys.argv[1], sys.argv[2]
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 7
    times = [one(binary, url) for _ in range(runs)]
    print("runs (ms):", " ".join(f"{t:.1f}" for t in times))
    print(f"median start-to-ready: {statistics.median(times):.1f} ms")


if __name__ == "__main__":
    main()
