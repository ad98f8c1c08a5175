"""The default render, byte for byte: any change to what `helm install ft ./chart` creates shows up in review.

Regenerate after an intended change with ``UPDATE_SNAPSHOTS=1 make test PYTEST_ARGS=tests/chart/test_snapshot.py``
and review the diff of ``tests/chart/snapshots/default.yaml``. Both Helm 3 and Helm 4 must
render exactly the snapshot.
"""

from __future__ import annotations

import os
from pathlib import Path

from fixtures.render import render_text

SNAPSHOT = Path(__file__).parent / "snapshots" / "default.yaml"


def test_default_render_matches_the_snapshot(helm):
    text = render_text(helm)
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        SNAPSHOT.write_text(text, encoding="utf-8")
    assert SNAPSHOT.is_file(), "no snapshot yet: run with UPDATE_SNAPSHOTS=1"
    assert text == SNAPSHOT.read_text(encoding="utf-8"), (
        "the default render changed: review it and regenerate tests/chart/snapshots/default.yaml (UPDATE_SNAPSHOTS=1)")
