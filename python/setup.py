"""Build hooks: ship the chart's values.yaml, values.schema.json and Chart.yaml inside the wheel,
and use the repository's README.md as the long description (pyproject.toml cannot point
outside python/).

``llm-finetune validate`` and the preflight hook validate against the chart's own schema.
Outside the repo (pip install, the images) they read ``llm_finetune/data/chart/``, which
this hook copies from ``../chart`` at build time, so the shipped copy is always the
chart's file (never a hand-kept second copy). Everything else is in pyproject.toml.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "chart"
README = ROOT / "README.md"
CHART_FILES = ("Chart.yaml", "values.yaml", "values.schema.json")


class BuildPyWithChart(build_py):
    def run(self):
        super().run()
        if self.editable_mode:  # a source checkout finds ../chart itself
            return
        missing = [f for f in CHART_FILES if not (CHART / f).is_file()]
        if missing:
            raise SystemExit(f"llm-finetune build: {', '.join(missing)} missing under {CHART}: build from the repository "
                             "(the wheel ships the chart's schema for 'llm-finetune validate')")
        dest = Path(self.build_lib) / "llm_finetune" / "data" / "chart"
        dest.mkdir(parents=True, exist_ok=True)
        for name in CHART_FILES:
            shutil.copyfile(CHART / name, dest / name)


setup(
    cmdclass={"build_py": BuildPyWithChart},
    long_description=README.read_text(encoding="utf-8") if README.is_file() else "",
    long_description_content_type="text/markdown",
)
