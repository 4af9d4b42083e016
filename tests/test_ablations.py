"""benchmarks/ablations.py --quick: the whole ablation path end to end, so the script cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_ablations_quick_writes_the_report(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "ablations.py"),
            "--quick",
            "--out",
            str(tmp_path / "runs"),
            "--docs",
            str(tmp_path / "docs"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = (tmp_path / "docs" / "ablations.md").read_text()
    for pair in (
        "initialisation from stage 1",
        "dense vs short captions",
        "per-block adaLN-Zero",
        "IDDPM vs rectified flow",
    ):
        assert pair in report
    assert "Quick mode" in report
    for index in range(1, 5):
        assert (tmp_path / "docs" / "ablations" / f"pair{index}.png").is_file()
    results = json.loads((tmp_path / "docs" / "ablations" / "results.json").read_text())["results"]
    assert set(results) == {"scratch", "stage1-init", "short-captions", "per-block-adaln", "iddpm"}
    # per-block adaLN-Zero carries one modulation MLP per block: more parameters than adaLN-single
    assert results["per-block-adaln"]["parameters"] > results["scratch"]["parameters"]
    for variant in results.values():
        curve = variant["runs"][0]["curve"]
        assert curve and all(0.0 <= point["binding"] <= 1.0 for point in curve)
