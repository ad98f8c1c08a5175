#!/usr/bin/env python3
"""``make gpu-wheels``: the wheels the GPU check needs on an accelerator image that has torch,
transformers, peft, accelerate and safetensors but no TRL or datasets (CPython 3.12, x86_64),
at this repo's pinned versions, into tests/gpu/wheels (git-ignored; carry it to the machine).

They must fit 64 MiB with the source tree; pyarrow alone is 55 MB, so its wheel is rewritten
without what neither datasets nor TRL loads: Arrow Flight (its libraries and extension
module; no other library of the wheel links them), the C++ headers, the Cython sources and pyarrow's own tests. The RECORD
file is rewritten to match.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "tests" / "gpu" / "wheels"
PACKAGES = ("trl", "datasets", "pyarrow", "pandas", "dill", "multiprocess", "xxhash")
DROP = ("flight", "/include/", "/tests/", "/src/", ".pyx", ".pxd", ".pxi")


def pinned(name: str) -> str:
    for line in (REPO / "python" / "constraints.txt").read_text().splitlines():
        if line.lower().startswith(name + "=="):
            return line.strip()
    raise SystemExit(f"{name} is not pinned in python/constraints.txt")


def slim(wheel: Path) -> None:
    """Rewrite ``wheel`` without the members DROP names, with a matching RECORD."""
    slimmed = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(slimmed, "w", zipfile.ZIP_DEFLATED) as dst:
        record_name = next(n for n in src.namelist() if n.endswith(".dist-info/RECORD"))
        records = []
        for info in src.infolist():
            name = info.filename
            if name == record_name or any(part in name.lower() for part in DROP):
                continue
            data = src.read(info)
            dst.writestr(info, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            records.append(f"{name},sha256={digest},{len(data)}")
        dst.writestr(record_name, "\n".join(records + [f"{record_name},,"]) + "\n")
    slimmed.replace(wheel)


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
                    "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64", "-d", str(OUT),
                    *(pinned(p) for p in PACKAGES)], check=True)
    for wheel in OUT.glob("pyarrow-*.whl"):
        slim(wheel)
    total = sum(w.stat().st_size for w in OUT.glob("*.whl"))
    print(f"gpu-wheels: {len(list(OUT.glob('*.whl')))} wheels, {total / 2 ** 20:.1f} MiB in {OUT}")
    return 0 if total < 60 * 2 ** 20 else 1


if __name__ == "__main__":
    sys.exit(main())
