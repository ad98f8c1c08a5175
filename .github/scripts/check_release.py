#!/usr/bin/env python3
"""Check that the chart version, appVersion, package version, image tags and CHANGELOG agree.

    check_release.py [--repo DIR] [--tag vX.Y.Z] [--allow-unreleased]

Rules: Chart.yaml ``version`` and ``appVersion`` are semver; ``appVersion`` = the Python
package version (python/pyproject.toml) = each Dockerfile's ``ARG VERSION`` default = the
tags in Chart.yaml's artifacthub.io/images annotation (images are tagged with appVersion);
CHANGELOG.md has a ``## [<chart version>]`` section (``--allow-unreleased``: or
``## [Unreleased]``, for CI on every push); ``--tag`` (the release tag) is ``v<chart version>``.
Writes ``version`` and ``app_version`` to ``$GITHUB_OUTPUT`` when set. Stdlib only. Exit 1
with every mismatch listed.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tomllib
from pathlib import Path

SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$")


def field(text: str, name: str) -> str:
    m = re.search(rf"^{name}:\s*[\"']?([^\"'\s#]+)", text, re.M)
    return m.group(1) if m else ""


def check(repo: Path, tag: str | None, allow_unreleased: bool) -> tuple[list[str], str, str]:
    problems = []
    chart = (repo / "chart" / "Chart.yaml").read_text()
    version, app_version = field(chart, "version"), field(chart, "appVersion")
    for name, value in (("version", version), ("appVersion", app_version)):
        if not SEMVER.match(value):
            problems.append(f"chart/Chart.yaml: {name} {value!r} is not semver (X.Y.Z)")
    package = tomllib.loads((repo / "python" / "pyproject.toml").read_text())["project"]["version"]
    if package != app_version:
        problems.append(f"python/pyproject.toml: version {package} != Chart.yaml appVersion {app_version}")
    for dockerfile in sorted((repo / "images").glob("*/Dockerfile")):
        m = re.search(r"^ARG VERSION=(\S+)", dockerfile.read_text(), re.M)
        if not m or m.group(1) != app_version:
            problems.append(f"{dockerfile.relative_to(repo)}: ARG VERSION={m.group(1) if m else '(missing)'} != appVersion {app_version}")
    for image, image_tag in re.findall(r"image:\s*(\S+?):(\S+)", chart):
        if image_tag != app_version:
            problems.append(f"chart/Chart.yaml: artifacthub.io/images {image}:{image_tag} != appVersion {app_version}")
    changelog = (repo / "CHANGELOG.md").read_text()
    headings = re.findall(r"^## \[([^\]]+)\]", changelog, re.M)
    if version not in headings and not (allow_unreleased and "Unreleased" in headings):
        problems.append(f"CHANGELOG.md: no '## [{version}]' section for chart version {version}")
    if tag is not None and tag != f"v{version}":
        problems.append(f"release tag {tag} != v{version} (chart/Chart.yaml version)")
    return problems, version, app_version


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", default=Path(__file__).resolve().parents[2], type=Path)
    parser.add_argument("--tag", default=None)
    parser.add_argument("--allow-unreleased", action="store_true")
    args = parser.parse_args(argv)
    problems, version, app_version = check(args.repo, args.tag, args.allow_unreleased)
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    if problems:
        return 1
    print(f"chart {version}, appVersion {app_version}: versions agree")
    if os.environ.get("GITHUB_OUTPUT"):
        with open(os.environ["GITHUB_OUTPUT"], "a", encoding="utf-8") as fh:
            fh.write(f"version={version}\napp_version={app_version}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
