"""Run every benchmark (tests/bench/bench_*.py) in turn: ``make bench`` (extra arguments, e.g. --quick, pass through)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    failed = []
    for bench in sorted(Path(__file__).parent.glob("bench_*.py")):
        print(f"=== {bench.name}", flush=True)
        if subprocess.run([sys.executable, str(bench), *argv]).returncode != 0:
            failed.append(bench.name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
