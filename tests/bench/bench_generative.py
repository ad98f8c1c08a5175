"""More generated values than `make test` runs: tests/validate/test_generative.py with 2000 examples
(``--quick``: 600; LLM_FINETUNE_GENERATIVE_EXAMPLES overrides), both real Helms per example.
Run: ``make bench`` or ``python tests/bench/bench_generative.py [--quick]``."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def main(argv: list[str]) -> int:
    n = os.environ.get("LLM_FINETUNE_GENERATIVE_EXAMPLES") or ("600" if "--quick" in argv else "2000")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pytest", "tests/validate/test_generative.py", "-q", "-s", "-p", "no:cacheprovider"],
                          cwd=REPO, env={**os.environ, "LLM_FINETUNE_GENERATIVE_EXAMPLES": n})
    print(f"generative: {n} examples in {time.monotonic() - started:.0f} s (exit {proc.returncode})")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
