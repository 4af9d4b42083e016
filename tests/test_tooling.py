"""The boring parts, enforced (design-anchors rule 15): lint, format, types and spelling stay clean.

Each tool reads its settings from pyproject.toml and runs from the venv that setup.sh builds, so a
fresh clone's CI checks exactly what a developer checks by hand.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CHECKED = ["src", "tests", "benchmarks"]


def run_tool(*argv: str) -> subprocess.CompletedProcess:
    tool = BIN / argv[0]
    if not tool.exists():
        pytest.fail(f"{argv[0]} is not installed in {BIN}: run ./setup.sh (pixart[dev] lists it)")
    return subprocess.run([str(tool), *argv[1:]], cwd=ROOT, capture_output=True, text=True, timeout=600)


def assert_clean(result: subprocess.CompletedProcess, fix: str) -> None:
    assert result.returncode == 0, f"{result.stdout}{result.stderr}\nfix: {fix}"


def test_ruff_lint_is_clean():
    assert_clean(run_tool("ruff", "check", *CHECKED), "ruff check --fix, or mend by hand")


def test_ruff_format_is_clean():
    assert_clean(run_tool("ruff", "format", "--check", *CHECKED), f"ruff format {' '.join(CHECKED)}")


@pytest.mark.slow
def test_mypy_finds_no_type_errors_in_src():
    # The files and the per-module settings are in pyproject.toml's [tool.mypy].
    assert_clean(run_tool("mypy"), "mend the annotations or the code mypy names")


def test_codespell_finds_no_typos():
    texts = [*CHECKED, "README.md", "BENCHMARKS.md", "docs", "setup.sh"]
    assert_clean(run_tool("codespell", *texts), "correct the spelling, or add a true word to [tool.codespell]")


def test_loading_the_vae_is_not_announced_by_bitsandbytes():
    """With the t5-8bit extra installed, importing diffusers' VAE imported bitsandbytes, which warned that its
    CPU 4-bit kernels package was missing: on every command that decoded an image, about nothing pixart uses."""
    pytest.importorskip("bitsandbytes")
    code = "import pixart.encoders.codecs; from diffusers import AutoencoderKL"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "kernels" not in result.stderr, result.stderr
