"""Bounded load test of the leaderboard's live demo: N simultaneous demo sessions through `gradio_client`.

Starts the app on 127.0.0.1 (a free port) in this process, runs each concurrency level once — every session
streams one synthetic sample (the families in turn) to the end — and reports how many completed, and the
p50/p95 seconds from submitting to the first closed step and to the last. Loopback only; every level stops by
itself (at most --timeout seconds; sessions past it count as not completed), and the number of requests is
the sum of the levels.

    .venv/bin/python experiments/demo_load.py --sessions 8 32
"""
from __future__ import annotations

import argparse
import concurrent.futures
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MAX_SESSIONS = 64  # a bound on one level, whatever is asked


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_session(url: str, image: str, prompt: str, deadline: float) -> dict:
    """One visitor: submit, read the stream, time the first update with a step and the last update."""
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False, download_files=False)  # the maps stay on the server: timing the stream, not copies
    start = time.perf_counter()
    job = client.submit(handle_file(image), prompt, False, api_name="/demo")
    first = None
    steps = 0
    for update in job:
        table = update[2] or {}
        steps = len(table.get("data") or []) if isinstance(table, dict) else 0
        if steps and first is None:
            first = time.perf_counter() - start
        if time.perf_counter() > deadline:
            job.cancel()
            return {"completed": False, "first_s": first, "last_s": None, "steps": steps}
    final = job.result(timeout=max(1.0, deadline - time.perf_counter()))  # the last update, whichever the loop saw
    last = time.perf_counter() - start
    steps = len((final[2] or {}).get("data") or [])
    if first is None and steps:
        first = last
    return {"completed": str(final[0]).startswith("done:"), "first_s": first, "last_s": last, "steps": steps,
            "status": str(final[0])[:80]}


def run_level(url: str, examples, n: int, timeout_s: float) -> dict:
    deadline = time.perf_counter() + timeout_s
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(one_session, url, *examples[i % len(examples)][::2], deadline) for i in range(n)]
        results = []
        for f in futures:
            try:
                results.append(f.result(timeout=max(1.0, deadline - time.perf_counter() + 30)))
            except Exception as e:  # a session that failed counts as not completed, with its reason
                results.append({"completed": False, "first_s": None, "last_s": None, "error": f"{type(e).__name__}: {e}"})
    done = [r for r in results if r["completed"]]

    def pct(key, q):
        values = [r[key] for r in done if r[key] is not None]
        return float(np.percentile(values, q)) if values else float("nan")

    errors = sorted({r["error"] for r in results if r.get("error")})
    return {"sessions": n, "completed": len(done), "first_p50": pct("first_s", 50), "first_p95": pct("first_s", 95),
            "last_p50": pct("last_s", 50), "last_p95": pct("last_s", 95), "errors": errors}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[8, 32], help="concurrency levels, each run once")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds a level may take at most")
    parser.add_argument("--demo-concurrency", type=int, default=None, help="the app's demo concurrency limit "
                        "(default: the app's own)")
    args = parser.parse_args(argv)
    if any(not 1 <= n <= MAX_SESSIONS for n in args.sessions):
        parser.error(f"each level must be 1–{MAX_SESSIONS} sessions")

    from vattr_bench.leaderboard.app import DEMO_CONCURRENCY, build_app, example_images

    limit = args.demo_concurrency or DEMO_CONCURRENCY
    examples = example_images(Path(tempfile.mkdtemp(prefix="vattr-load-")))
    app = build_app([], demo_concurrency=limit)
    port = _free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        run_level(url, examples, 1, args.timeout)  # warm-up: the model loads at the first stream
        print(f"demo concurrency limit {limit}; seconds from submit to the first closed step / to the last update")
        print("| sessions | completed | first step p50 | p95 | last p50 | p95 |")
        print("|---|---|---|---|---|---|")
        for n in args.sessions:
            r = run_level(url, examples, n, args.timeout)
            print(f"| {n} | {r['completed']}/{n} | {r['first_p50']:.2f} | {r['first_p95']:.2f} | {r['last_p50']:.2f} | "
                  f"{r['last_p95']:.2f} |" + (f" errors: {'; '.join(r['errors'])}" if r["errors"] else ""), flush=True)
    finally:
        app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
