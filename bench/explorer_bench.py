"""Benchmark of the explorer on a Llama-3.1-8B-sized synthetic cache (not a test: run it by hand).

    .venv/bin/python bench/explorer_bench.py [--n-prompts 1199] [--cache-dir /tmp/neuron-explorer-bench]

Builds (once, then reuses; keyed by its parameters) a synthetic cache of 32 layers × 14,336 neurons, then
drives the real app headless through a Pilot and prints target against measured: the first screen after start
(Python imports reported separately, measured in a fresh interpreter), re-sort, layer switch, filter and
resident memory.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

IMPORT_PROBE = ("import time; t = time.perf_counter(); import neuron_explorer.explorer.app; "
                "print(time.perf_counter() - t)")


def cache_for(args) -> Path:
    from neuron_explorer.engine.neurons.synthetic import build_synthetic_cache

    path = args.cache_dir / f"synthetic-L{args.n_layers}-N{args.d_mlp}-P{args.n_prompts}-M{args.d_model}-s0.h5"
    if not path.exists():
        args.cache_dir.mkdir(parents=True, exist_ok=True)
        print(f"building {path} (once; a few minutes and ~2 GB)…", flush=True)
        started = time.perf_counter()
        build_synthetic_cache(path, n_layers=args.n_layers, d_mlp=args.d_mlp, n_prompts=args.n_prompts,
                              d_model=args.d_model, seed=0)
        print(f"built in {time.perf_counter() - started:.0f} s", flush=True)
    return path


def import_seconds() -> float:
    """Import time of the app module in a fresh interpreter (the best of three, to skip a cold disk cache)."""
    runs = [float(subprocess.run([sys.executable, "-c", IMPORT_PROBE], capture_output=True, text=True,
                                 check=True).stdout) for _ in range(3)]
    return min(runs)


def resident_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def measure(path: Path, size: tuple[int, int]) -> dict:
    from neuron_explorer.explorer.app import ExplorerApp
    from neuron_explorer.explorer.state import Filters, Store

    started = time.perf_counter()
    app = ExplorerApp(Store.open(path))
    figures: dict = {}
    async with app.run_test(size=size) as pilot:
        while app.first_screen_ready_at is None:
            await asyncio.sleep(0.005)
        figures["first screen"] = app.first_screen_ready_at - started
        await app.workers.wait_for_complete()
        await pilot.pause()
        figures["all-layer table loaded"] = time.perf_counter() - started
        await pilot.press("2")
        await pilot.pause()

        async def timed(change) -> float:
            begun = time.perf_counter()
            change()
            await pilot.pause()
            return time.perf_counter() - begun

        figures["re-sort"] = [await timed(lambda c=c, d=d: app.sort_by(c, d)) for c, d in (
            ("act_shift", True), ("act_shift", False), ("cos_pre", True), ("group", True), ("cluster", False),
            ("act_pre", True), ("contribution", True))]
        figures["layer switch"] = [await timed(lambda layer=layer: app.set_layer(layer))
                                   for layer in (0, 7, 15, 31, None, 12, None)]
        figures["filter"] = [await timed(lambda f=f: app.set_filters(f)) for f in (
            Filters(group="TP↓"), Filters(sign="+"), Filters(threshold=("contribution", "|x|>=", 1e-3)),
            Filters(group="AN↑", sign="-", threshold=("act_shift", ">=", 0.0)), Filters(cluster=3), Filters())]
        figures["resident memory"] = resident_mb()
        await pilot.press("q")
    app.store.reader.close()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-layers", type=int, default=32)
    parser.add_argument("--d-mlp", type=int, default=14336)
    parser.add_argument("--n-prompts", type=int, default=1199)
    parser.add_argument("--d-model", type=int, default=64, help="width of the synthetic residual stream")
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/neuron-explorer-bench"))
    parser.add_argument("--size", default="120x40", help="terminal size, WxH")
    args = parser.parse_args()
    path = cache_for(args)
    imports = import_seconds()
    size = tuple(int(part) for part in args.size.split("x"))
    figures = asyncio.run(measure(path, size))

    n_neurons = args.n_layers * args.d_mlp
    print(f"\nexplorer benchmark: {n_neurons:,} neurons ({args.n_layers} layers × {args.d_mlp:,}), "
          f"{args.n_prompts:,} prompts, terminal {args.size}, Python {sys.version.split()[0]}\n")
    rows = [("Python imports (app module)", None, imports, "s")]
    rows.append(("first screen after start", 1.0, figures["first screen"], "s"))
    rows.append(("all-layer table loaded (background)", None, figures["all-layer table loaded"], "s"))
    for name, target in (("re-sort", 0.150), ("layer switch", 0.100), ("filter", 0.150)):
        samples = figures[name]
        rows.append((f"{name} (median of {len(samples)})", target, statistics.median(samples), "s"))
        rows.append((f"{name} (worst)", target, max(samples), "s"))
    rows.append(("resident memory", 1024, figures["resident memory"], "MB"))
    print(f"{'measure':<38}{'target':>10}{'measured':>12}  ok")
    failed = False
    for name, target, value, unit in rows:
        scale = 1000 if unit == "s" else 1
        shown_unit = "ms" if unit == "s" else unit
        target_text = "—" if target is None else f"≤{target * scale:.0f} {shown_unit}"
        ok = "" if target is None else ("yes" if value <= target else "NO")
        failed |= ok == "NO"
        print(f"{name:<38}{target_text:>10}{value * scale:>9.0f} {shown_unit:<2}  {ok}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
