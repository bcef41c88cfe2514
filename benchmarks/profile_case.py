"""Profile one benchmark case: where the time goes.

Usage::

    python benchmarks/profile_case.py hot_path                 # the caller's cost of a task log
    python benchmarks/profile_case.py structlog_processor
    python benchmarks/profile_case.py end_to_end --n 50000     # the worker's side included

Runs the case of ``cases.py`` in this process under pyinstrument (a sampling profiler, in
the dev extra; ``pip install pyinstrument``) and prints its call tree, with the functions
of this package and of ``logging`` kept and the benchmark's own loop folded away. Without
pyinstrument, ``cProfile`` is used instead (deterministic, so small functions look
costlier than they are: read its ratios, not its times).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
from pathlib import Path
from typing import List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cases  # noqa: E402


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", choices=sorted(cases.CASES))
    parser.add_argument("--n", type=int, default=100_000, help="calls (or tasks) per timed loop")
    parser.add_argument("--interval", type=float, default=0.0001, help="pyinstrument's sampling interval, s")
    parser.add_argument("--cprofile", action="store_true", help="use cProfile even if pyinstrument is installed")
    args = parser.parse_args(argv)
    run = cases.CASES[args.case]
    try:
        if args.cprofile:
            raise ImportError
        from pyinstrument import Profiler
    except ImportError:
        profile = cProfile.Profile()
        profile.runcall(run, args.n)
        # This package's functions and logging's, by their own time.
        pstats.Stats(profile).sort_stats("tottime").print_stats(r"phospho_logging|logging[/\\]__init__", 25)
        return 0
    profiler = Profiler(interval=args.interval)
    profiler.start()
    result = run(args.n)
    profiler.stop()
    print(profiler.output_text(unicode=False, color=False, show_all=False, timeline=False))
    print({k: v for k, v in result.items() if k in ("value", "unit", "error")})
    return 0


if __name__ == "__main__":
    with cases.private_store():
        sys.exit(main())
