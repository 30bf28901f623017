"""bench/gpu_check.sh --dry-run: the GPU check's every step on tiny shapes on the CPU, its table spliced into a page
between the markers (the page's other text kept)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_check_runs_dry_on_the_cpu_and_splices_its_table(tmp_path):
    page = tmp_path / "scale.md"
    page.write_text("# Larger models\n\nbefore\n<!-- gpu-check:begin -->\nold table\n<!-- gpu-check:end -->\nafter\n")
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "NEURON_EXPLORER_HOME": str(tmp_path / "home"),
        "TMPDIR": str(tmp_path),
    }
    done = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run", "--table", str(page)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    text = page.read_text()
    assert text.startswith("# Larger models\n\nbefore\n<!-- gpu-check:begin -->\n") and text.endswith(
        "<!-- gpu-check:end -->\nafter\n"
    )
    assert "old table" not in text
    for row in (
        "bare greedy generation, both models",
        "recording / bare",
        "patch run / without hooks",
        "torchrun --nproc_per_node 1 compute",
        "explorer first screen",
        "skipped (a dry run)",
    ):
        assert row in text, row
    assert not list(tmp_path.glob("gpu-check.*"))  # its work folder is removed
