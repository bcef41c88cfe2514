"""Run the phospho_logging benchmark suite and print a summary table.

Usage::

    python benchmarks/run.py            # full: 7 rounds, 100k calls per loop, 50k tasks end to end
    python benchmarks/run.py --quick    # 3 rounds, 20k calls, 20k tasks (well under 2 minutes)
    python benchmarks/run.py --quick --json results.json --cases hot_path null_extra

Every case runs in a fresh subprocess (``python benchmarks/cases.py CASE --n N``) that
prints one JSON line. Cases are interleaved round-robin (each round in a rotated order),
so load noise on a shared machine hits all cases alike. The table gives the median, min
and max over rounds and, for the cases that have one, the ratio of the median to the
median of its baseline measured in the same run:

    stdlib_queue / null_extra, hot_path / null_extra, floor_handler / null_extra,
    structlog_processor / structlog_enqueue, floor_processor / structlog_enqueue,
    hot_path_messages / null_messages, non_task / null_plain,
    wrap_call / wrap_plain (per call), stream_wrapped / stream_plain (per chunk)

See ``cases.py`` for what each case measures. ``PHOSPHO_*`` variables are not passed on.
Works from a source checkout without installing, and with the package installed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

CASES_FILE = Path(__file__).resolve().parent / "cases.py"
ORDER = [
    "null_extra", "stdlib_queue", "hot_path", "hot_path_otel_idle", "hot_path_otel_span", "floor_handler",
    "null_messages", "hot_path_messages",
    "null_plain", "non_task", "structlog_enqueue", "structlog_processor", "floor_processor",
    "end_to_end", "end_to_end_50ms", "end_to_end_durable", "end_to_end_local", "cpu_per_task",
    "wrap_plain", "wrap_call", "stream_plain", "stream_wrapped", "stream_raw_lines", "stream_raw_cut",
    "redact_worker", "latency_up", "latency_down", "exit_hung", "sdk_log", "sdk_end_to_end", "sdk_end_to_end_50ms",
]
END_TO_END = {
    "end_to_end", "end_to_end_50ms", "end_to_end_durable", "end_to_end_local", "cpu_per_task",
    "latency_up", "latency_down", "sdk_end_to_end", "sdk_end_to_end_50ms",
}
BASELINE = {
    "stdlib_queue": "null_extra",
    "hot_path": "null_extra",
    "hot_path_otel_idle": "null_extra",
    "hot_path_otel_span": "null_extra",
    "floor_handler": "null_extra",
    "hot_path_messages": "null_messages",
    "non_task": "null_plain",
    "structlog_processor": "structlog_enqueue",
    "floor_processor": "structlog_enqueue",
    "wrap_call": "wrap_plain",
    "stream_wrapped": "stream_plain",
    "latency_down": "latency_up",
    "sdk_log": "null_extra",
    "cpu_per_task": "null_extra",
}
# case -> (text printed beside the ratio, limit checked or None)
TARGETS = {
    "hot_path": ("<= 1.45x", 1.45),
    "stdlib_queue": ("~2.0x (known)", None),
    "non_task": ("~1.0x (expected)", None),
    "structlog_processor": ("<= 2.0x", 2.0),
    "floor_handler": ("reference", None),
    "floor_processor": ("reference", None),
    "latency_down": ("<= 1.5x", 1.5),
    "cpu_per_task": ("<= 3.0x", 3.0),
}
#: Cases whose size is part of what they measure, in every mode.
FIXED_N = {"exit_hung": 1000, "latency_up": 50_000, "latency_down": 50_000}
#: Rows checked on their value, not on a ratio: (text, limit, True if the value must stay below).
VALUE_TARGETS = {
    "down_memory": ("< 20 MB", 20.0, True),
    "end_to_end": (">= 30,000", 30_000.0, False),
}
MODES = {
    "quick": {"rounds": 3, "calls": 20_000, "tasks": 20_000, "timeout": 60.0},
    "full": {"rounds": 7, "calls": 100_000, "tasks": 50_000, "timeout": 300.0},
}


def machine() -> Dict[str, Any]:
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "executable": sys.executable,
    }


def run_case(case: str, n: int, timeout: float, extra_args: List[str]) -> Dict[str, Any]:
    """One fresh subprocess; its last JSON line, or a record with an ``error``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHOSPHO_")}
    cmd = [sys.executable, str(CASES_FILE), case, "--n", str(n), *extra_args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"case": case, "n": n, "error": f"timed out after {timeout:.0f}s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            try:
                result = json.loads(line)
            except ValueError:
                break
            if proc.returncode:
                result.setdefault("error", f"exit status {proc.returncode}")
            return result
    tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
    return {"case": case, "n": n, "error": f"exit status {proc.returncode}, no result: {tail}"}


def summarize(results: List[Dict[str, Any]], cases: List[str]) -> List[Dict[str, Any]]:
    """Median/min/max per case (rounds with a value), ratios to the baselines' medians."""
    values: Dict[str, List[float]] = {c: [] for c in cases}
    units: Dict[str, str] = {}
    rss: List[float] = []
    down: List[float] = []
    for r in results:
        if r.get("value") is not None:
            values[r["case"]].append(r["value"])
            units[r["case"]] = r.get("unit", "")
        if r["case"] == "end_to_end" and r.get("peak_rss_mb") is not None:
            rss.append(r["peak_rss_mb"])
        if r["case"] == "latency_down" and r.get("rss_growth_mb") is not None:
            down.append(r["rss_growth_mb"])
    rows = []
    errors = {c: sum(1 for r in results if r["case"] == c and "error" in r) for c in cases}
    runs = {c: sum(1 for r in results if r["case"] == c) for c in cases}
    medians = {c: statistics.median(v) for c, v in values.items() if v}
    derived = {"peak_rss": (rss, "MB (end_to_end)"), "down_memory": (down, "MB growth (latency_down)")}
    for case in cases + [name for name, (vals, _) in derived.items() if vals]:
        vals = derived[case][0] if case in derived else values[case]
        row: Dict[str, Any] = {"case": case, "rounds": len(vals), "runs": runs.get(case, len(vals)),
                               "errors": errors.get(case, 0)}
        if vals:
            row.update(median=statistics.median(vals), min=min(vals), max=max(vals))
        row["unit"] = derived[case][1] if case in derived else units.get(case, "")
        skipped = next((r["skipped"] for r in results if r["case"] == case and "skipped" in r), None)
        if skipped and not vals:
            row["skipped"] = skipped
        base = BASELINE.get(case)
        if base and case in medians and base in medians:
            row["ratio"], row["baseline"] = medians[case] / medians[base], base
        rows.append(row)
    return rows


def _num(value: Optional[float], unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:,.1f}" if unit.startswith("MB") else f"{value:,.0f}"


def table(rows: List[Dict[str, Any]]) -> str:
    head = ["case", "median", "min", "max", "unit", "ratio", "vs baseline", "target"]
    lines = [head]
    for row in rows:
        unit = row["unit"]
        ratio, target = "-", ""
        if "ratio" in row:
            ratio = f"{row['ratio']:.2f}x"
            text, limit = TARGETS.get(row["case"], ("", None))
            verdict = "" if limit is None else ("  ok" if row["ratio"] <= limit else "  OVER")
            target = text + verdict
        if row["case"] in VALUE_TARGETS and row.get("median") is not None:
            text, bound, below = VALUE_TARGETS[row["case"]]
            ok = row["median"] < bound if below else row["median"] >= bound
            target = text + ("  ok" if ok else "  OVER" if below else "  UNDER")
        if row.get("skipped"):
            target = f"skipped: {row['skipped']}"
        if row.get("errors"):
            target = (target + "  " if target else "") + f"! errors in {row['errors']}/{row['runs']} rounds"
        lines.append([
            row["case"], _num(row.get("median"), unit), _num(row.get("min"), unit),
            _num(row.get("max"), unit), unit, ratio, row.get("baseline", ""), target,
        ])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    right = {1, 2, 3, 5}
    out = []
    for k, line in enumerate(lines):
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths))]
        out.append("  ".join(cells).rstrip())
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="phospho_logging benchmarks")
    parser.add_argument("--quick", action="store_true", help="3 rounds, smaller N")
    parser.add_argument("--json", metavar="FILE", help="save the raw results and the summary")
    parser.add_argument("--cases", nargs="+", choices=ORDER, help="run only these cases")
    parser.add_argument("--rounds", type=int, help="override the number of rounds")
    parser.add_argument("--timeout", type=float, help="seconds per subprocess")
    parser.add_argument("--max-queue-size", type=int,
                        help="end-to-end cases: override this option (default options otherwise)")
    args = parser.parse_args(argv)

    mode = "quick" if args.quick else "full"
    cfg = dict(MODES[mode])
    rounds = args.rounds or cfg["rounds"]
    timeout = args.timeout or cfg["timeout"]
    cases = [c for c in ORDER if not args.cases or c in args.cases]
    e2e_args = [] if args.max_queue_size is None else ["--max-queue-size", str(args.max_queue_size)]
    info = machine()
    date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")

    print(f"phospho_logging benchmarks - {mode}: {rounds} rounds, {cfg['calls']:,} calls per timed loop "
          f"(best of 3 in-process), {cfg['tasks']:,} tasks end to end")
    print(f"date:    {date}")
    print(f"machine: {info['platform']}, {info['cpu_count']} CPUs, {info['python']}")
    sys.stdout.flush()

    started = time.perf_counter()
    results: List[Dict[str, Any]] = []
    for rnd in range(rounds):
        shift = rnd % len(cases)
        for case in cases[shift:] + cases[:shift]:  # rotate so no case always runs first
            e2e = case in END_TO_END
            n = FIXED_N.get(case) or (cfg["tasks"] if e2e else cfg["calls"])
            result = run_case(case, n, timeout, e2e_args if e2e else [])
            result["round"] = rnd + 1
            results.append(result)
            if "error" in result:
                status = f"ERROR {result['error'][:160]}"
            elif "skipped" in result:
                status = f"skipped: {result['skipped']}"
            else:
                status = f"{result.get('value', 0):,.0f} {result.get('unit', '')}"
            print(f"  round {rnd + 1}/{rounds} {case:<18} {status}", file=sys.stderr, flush=True)
    wall = time.perf_counter() - started

    rows = summarize(results, cases)
    package = next((r for r in results if "package" in r), {})
    print(f"package: phospho_logging {package.get('version', '?')} from {package.get('package', '?')}")
    if args.max_queue_size is not None:
        print(f"options: end-to-end cases with max_queue_size={args.max_queue_size}, others default")
    print()
    print(table(rows))
    print()
    print("ratio = median / median of the baseline named beside it (same run); ns/call: lower is better, "
          "tasks/s (delivered / elapsed): higher is better")
    errors = [r for r in results if "error" in r]
    for r in errors:
        print(f"ERROR {r['case']} round {r.get('round')}: {r['error'][:300]}")
    print(f"wall time: {wall:.1f}s")

    if args.json:
        payload = {"date": date, "machine": info, "mode": mode, "rounds": rounds, "sizes": cfg,
                   "max_queue_size": args.max_queue_size, "wall_seconds": wall,
                   "results": results, "summary": rows}
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"raw results saved to {args.json}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
