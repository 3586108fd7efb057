"""Shared fixtures: the project's read-only data folder ``../shared`` next to the repository."""

from pathlib import Path

import pytest

SHARED_DIR = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` relative to the repository root; skips the test when it is absent."""
    if not SHARED_DIR.is_dir():
        pytest.skip(f"shared data folder {SHARED_DIR} is absent")
    return SHARED_DIR


@pytest.fixture(scope="session")
def reference_runs(shared_dir: Path) -> Path:
    """FELIX reference runs, ``shared/data/felix-reference/runs``; skips when absent."""
    runs = shared_dir / "data" / "felix-reference" / "runs"
    if not runs.is_dir():
        pytest.skip(f"FELIX reference runs {runs} are absent")
    return runs
