"""Data-parallel benchmark (not a test): the same `compute` as one process with 2 threads and as `torchrun` with
2 processes of 1 thread each, side by side in one run, on this machine's cores.

    .venv/bin/python bench/parallel_bench.py [--max-prompts 192] [--repeats 2] [--base embedded --tuned embedded-dpo]

It prints each run's wall time and stages (as `compute` reports them), the time rank 0 spent in collectives (moving
per-prompt rows and sums, and waiting for the other rank), their share of the run (target ≤ 10%), and what the
measured shares predict for N GPUs: the recording, the identity check and the logit lens are dealt out, loading
happens on every rank at once, and the statistics, clustering and writing stay on rank 0, as does receiving every
per-prompt row (its cost does not shrink with N). A first untimed run fills the logit-lens memo, so both timed runs
read it alike.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGE = re.compile(r"([a-z_ ]+?) ([0-9.]+)s")
DEALT_OUT = ("record_pre", "record_dpo", "identity", "lens")


def compute(args, output: Path, processes: int, threads: int) -> tuple[float, dict[str, float]]:
    """Wall seconds of one `compute` and its stages, read from its last line."""
    command = [
        "-m",
        "neuron_explorer",
        "compute",
        "--base",
        args.base,
        "--tuned",
        args.tuned,
        "--max-prompts",
        str(args.max_prompts),
        "--device",
        "cpu",
        "-o",
        str(output),
    ]
    launcher = (
        [] if processes == 1 else ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    )
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "COLUMNS": "400"}
    started = time.perf_counter()
    result = subprocess.run([sys.executable, *launcher, *command], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"compute failed ({processes} processes):\n{result.stderr[-3000:]}")
    line = next(line for line in result.stderr.splitlines()[::-1] if line.startswith("wrote "))
    stages = {name.strip(): float(seconds) for name, seconds in STAGE.findall(line.split("(", 1)[1])}
    return wall, stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-prompts", type=int, default=192, help="prompts read (half are held out for patching)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each setting, interleaved; medians")
    parser.add_argument("--base", default="embedded")
    parser.add_argument("--tuned", default="embedded-dpo")
    args = parser.parse_args()
    settings = {"1 process × 2 threads": (1, 2), "2 processes × 1 thread": (2, 1)}
    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "bench.h5"
        print(f"warming up (fills the logit-lens memo) on {args.max_prompts} prompts …", flush=True)
        compute(args, output, 1, 2)
        runs: dict[str, list] = {name: [] for name in settings}
        for _ in range(args.repeats):
            for name, (processes, threads) in settings.items():
                runs[name].append(compute(args, output, processes, threads))
    names = list(dict.fromkeys(stage for measured in runs.values() for stage in measured[0][1]))
    print(f"\n{'setting':<26}{'wall s':>8}" + "".join(f"{stage.replace('of which ', ''):>13}" for stage in names))
    medians = {}
    for name, measured in runs.items():
        wall = statistics.median(w for w, _ in measured)
        stages = {stage: statistics.median(s[stage] for _, s in measured) for stage in measured[0][1]}
        medians[name] = (wall, stages)
        print(
            f"{name:<26}{wall:>8.1f}"
            + "".join(f"{stages[stage]:>13.1f}" if stage in stages else f"{'—':>13}" for stage in names)
        )
    (one_wall, one), (two_wall, two) = medians.values()
    collectives = two.get("of which collectives", 0.0)
    print(f"\nspeed-up of 2 processes × 1 thread over 1 process × 2 threads: {one_wall / two_wall:.2f}×")
    print(
        f"time in collectives on rank 0 (moving rows and sums, waiting for rank 1): {collectives:.1f} s = "
        f"{collectives / two_wall:.1%} of the 2-process run (target ≤ 10%)"
    )
    imports = two_wall - sum(value for key, value in two.items() if key != "of which collectives")
    dealt = sum(two[key] for key in DEALT_OUT if key in two) - collectives
    serial = two.get("statistics", 0.0)
    print(
        f"shares of the 2-process run: dealt-out work {dealt:.1f} s (per rank), collectives {collectives:.1f} s, "
        f"rank 0 alone (statistics, clustering, writing) {serial:.1f} s, loading {two.get('load', 0):.1f} s, "
        f"start-up and imports {imports:.1f} s"
    )
    print("expected on N GPUs, from these shares (dealt-out work ÷ N, the rest as measured):")
    for n in (1, 2, 4, 8, 32):
        expected = imports + two.get("load", 0) + 2 * dealt / n + (collectives if n > 1 else 0) + serial
        print(
            f"  N = {n:>2}: {expected:6.1f} s  ({(imports + two.get('load', 0) + 2 * dealt + serial) / expected:.2f}× "
            f"one process of one thread)"
        )


if __name__ == "__main__":
    main()
