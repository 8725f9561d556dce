"""``python -m benchmarks [NAME ...] [--quick]``: run benchmarks, print figures, write JSON.

Names: backfill, webhook-ack, search, pipeline-skip, retrieval, scale-out, webhook-to-searchable,
listing-requests, filtered-search, langchain-compare, memory (default: all, in that order).
Results go to ``benchmarks/results/<name>.json`` (git-ignored). Figures only: nothing here
asserts on a timing.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import logging
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

BENCHMARKS = {
    "backfill": "benchmarks.backfill",
    "webhook-ack": "benchmarks.webhook_ack",
    "search": "benchmarks.search",
    "pipeline-skip": "benchmarks.pipeline_skip",
    "retrieval": "benchmarks.retrieval",
    "scale-out": "benchmarks.scale_out",
    "webhook-to-searchable": "benchmarks.webhook_to_searchable",
    "listing-requests": "benchmarks.listing_requests",
    "filtered-search": "benchmarks.filtered_search",
    "langchain-compare": "benchmarks.langchain_compare",
    "memory": "benchmarks.memory",
}
RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        # Other processes on the machine skew every figure: record how busy it was.
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
    }


def print_table(name: str, result: dict[str, Any]) -> None:
    load = result["machine"]["load_average_1_5_15"][0], result.get("load_average_after", [0])[0]
    print(f"\n== {name} ({result['wall_s']:.1f} s; load average {load[0]} before, {load[1]} after) ==")
    for key, value in result.get("params", {}).items():
        print(f"  {'param ' + key:<44} {value}")
    for key, value in result.get("figures", {}).items():
        print(f"  {key:<44} {value}")
    if result.get("error"):
        print(f"  ERROR: {result['error']}")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", metavar="NAME", help=", ".join(BENCHMARKS))
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    args = parser.parse_args(argv)
    names = args.names or list(BENCHMARKS)
    if unknown := [n for n in names if n not in BENCHMARKS]:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}; one of {', '.join(BENCHMARKS)}")
    logging.basicConfig(level=logging.WARNING)
    # The sync actor returns its counts and no Results middleware is configured, so Dramatiq
    # warns once per message (reported in docs/benchmarks.md); drop only that line.
    logging.getLogger("dramatiq.worker.WorkerThread").addFilter(
        lambda record: "returned a value that is not None" not in record.getMessage())

    from benchmarks.harness import Infra

    RESULTS.mkdir(exist_ok=True)
    infra = Infra()
    failed = 0
    try:
        infra.start()
        for name in names:
            module = importlib.import_module(BENCHMARKS[name])
            started = time.monotonic()
            result: dict[str, Any] = {"name": name, "quick": args.quick,
                                      "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                                      "machine": machine(), "infra": {"embedded": infra.embedded}}
            try:
                result |= module.run(infra, args.quick)
            except Exception as exc:  # noqa: BLE001 - report it, run the next benchmark
                failed += 1
                result["error"] = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
            result["wall_s"] = round(time.monotonic() - started, 2)
            result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
            (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
            print_table(name, result)
    finally:
        infra.stop()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
