"""Benchmark of the explorer on Llama-sized synthetic caches (not a test: run it by hand).

    .venv/bin/python bench/explorer_bench.py [--size 8b|70b|all] [--n-layers L --d-mlp N] [--n-prompts 1199]
                                             [--cache-dir /tmp/neuron-explorer-bench]

Builds (once, then reuses; keyed by its parameters) a synthetic cache of the size's layers × neurons (8b:
32 × 14,336 = 458,752 neurons, ~2 GB; 70b: 80 × 28,672 = 2,293,760 neurons, ~11 GB; --n-layers/--d-mlp
override the size's shape), then drives the real app headless through a Pilot and prints target against
measured: the first screen after start (Python imports reported separately, measured in a fresh interpreter),
re-sort, layer switch, filter and resident memory. `--size all` measures each size in its own process (so the
resident memory is that size's alone) and prints them side by side with the 70b/8b ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

# name: (layers, d_mlp, the model it stands for)
SIZES = {"8b": (32, 14336, "Llama-3.1-8B"), "70b": (80, 28672, "Llama-3.1-70B")}
# measure: target (seconds or MB); what the explorer meets at 458,752 neurons, kept at every size
TARGETS = {"first screen": 0.500, "re-sort": 0.150, "layer switch": 0.100, "filter": 0.150, "resident memory": 1024}
IMPORT_PROBE = (
    "import time; t = time.perf_counter(); import neuron_explorer.explorer.app; print(time.perf_counter() - t)"
)


def cache_for(args) -> Path:
    from neuron_explorer.engine.neurons.synthetic import build_synthetic_cache

    path = args.cache_dir / f"synthetic-L{args.n_layers}-N{args.d_mlp}-P{args.n_prompts}-M{args.d_model}-s0.h5"
    if not path.exists():
        args.cache_dir.mkdir(parents=True, exist_ok=True)
        gigabytes = 2 * 2 * args.n_prompts * args.n_layers * args.d_mlp / 1e9  # two models' float16 activations
        print(f"building {path} (once; ~{gigabytes:.0f} GB, a minute or so per GB)…", flush=True)
        started = time.perf_counter()
        build_synthetic_cache(
            path, n_layers=args.n_layers, d_mlp=args.d_mlp, n_prompts=args.n_prompts, d_model=args.d_model, seed=0
        )
        print(f"built in {time.perf_counter() - started:.0f} s", flush=True)
    return path


def import_seconds() -> float:
    """Import time of the app module in a fresh interpreter (the best of three, to skip a cold disk cache)."""
    runs = [
        float(subprocess.run([sys.executable, "-c", IMPORT_PROBE], capture_output=True, text=True, check=True).stdout)
        for _ in range(3)
    ]
    return min(runs)


def resident_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def measure(path: Path, size: tuple[int, int], n_layers: int) -> dict:
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

        figures["re-sort"] = [
            await timed(lambda c=c, d=d: app.sort_by(c, d))
            for c, d in (
                ("act_shift", True),
                ("act_shift", False),
                ("cos_pre", True),
                ("group", True),
                ("cluster", False),
                ("act_pre", True),
                ("contribution", True),
            )
        ]
        figures["layer switch"] = [
            await timed(lambda layer=layer: app.set_layer(layer))
            for layer in (0, n_layers // 4 - 1, n_layers // 2 - 1, n_layers - 1, None, min(12, n_layers - 1), None)
        ]
        figures["filter"] = [
            await timed(lambda f=f: app.set_filters(f))
            for f in (
                Filters(group="TP↓"),
                Filters(sign="+"),
                Filters(threshold=("contribution", "|x|>=", 1e-3)),
                Filters(group="AN↑", sign="-", threshold=("act_shift", ">=", 0.0)),
                Filters(cluster=3),
                Filters(),
            )
        ]
        figures["resident memory"] = resident_mb()
        await pilot.press("q")
    app.store.reader.close()
    return figures


def measure_size(args) -> dict:
    """Build or reuse the cache of ``args``' shape and measure it in this process."""
    path = cache_for(args)
    imports = import_seconds()
    terminal = tuple(int(part) for part in args.terminal.split("x"))
    figures = asyncio.run(measure(path, terminal, args.n_layers))
    figures["Python imports"] = imports
    figures["shape"] = [args.n_layers, args.d_mlp, args.n_prompts]
    return figures


def table_rows(figures: dict) -> list[tuple[str, float | None, float, str]]:
    """(measure, target, value, unit) rows of one size's figures."""
    rows = [
        ("Python imports (app module)", None, figures["Python imports"], "s"),
        ("first screen after start", TARGETS["first screen"], figures["first screen"], "s"),
        ("all-layer table loaded (background)", None, figures["all-layer table loaded"], "s"),
    ]
    for name in ("re-sort", "layer switch", "filter"):
        samples = figures[name]
        rows.append((f"{name} (median of {len(samples)})", TARGETS[name], statistics.median(samples), "s"))
        rows.append((f"{name} (worst)", TARGETS[name], max(samples), "s"))
    rows.append(("resident memory", TARGETS["resident memory"], figures["resident memory"], "MB"))
    return rows


def shown(value: float, unit: str) -> str:
    return f"{value * 1000:.0f} ms" if unit == "s" else f"{value:.0f} {unit}"


def verdict(target: float | None, value: float) -> str:
    return "" if target is None else ("yes" if value <= target else "NO")


def describe(figures: dict) -> str:
    n_layers, d_mlp, n_prompts = figures["shape"]
    return f"{n_layers * d_mlp:,} neurons ({n_layers} layers × {d_mlp:,}), {n_prompts:,} prompts"


def print_one(figures: dict, terminal: str) -> bool:
    print(f"\nexplorer benchmark: {describe(figures)}, terminal {terminal}, Python {sys.version.split()[0]}\n")
    print(f"{'measure':<38}{'target':>10}{'measured':>12}  ok")
    failed = False
    for name, target, value, unit in table_rows(figures):
        ok = verdict(target, value)
        failed |= ok == "NO"
        target_text = "—" if target is None else "≤" + shown(target, unit)
        print(f"{name:<38}{target_text:>10}{shown(value, unit):>12}  {ok}")
    return failed


def print_side_by_side(results: dict[str, dict], terminal: str) -> bool:
    names = list(results)
    print(f"\nexplorer benchmark, terminal {terminal}, Python {sys.version.split()[0]}")
    for name in names:
        print(f"  {name}: {describe(results[name])}")
    header = f"{'measure':<38}{'target':>10}" + "".join(f"{name:>12}  ok " for name in names)
    if len(names) == 2:
        header += f"{names[1] + '/' + names[0]:>9}"
    print("\n" + header)
    failed = False
    tables = [table_rows(results[name]) for name in names]
    for lines in zip(*tables):
        label, target, _, unit = lines[0]
        text = f"{label:<38}{'—' if target is None else '≤' + shown(target, unit):>10}"
        for _, _, value, _ in lines:
            ok = verdict(target, value)
            failed |= ok == "NO"
            text += f"{shown(value, unit):>12}  {ok:<3}"
        if len(lines) == 2 and lines[0][2] > 0:
            text += f"{lines[1][2] / lines[0][2]:>8.2f}×"
        print(text)
    return failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--size",
        choices=[*SIZES, "all"],
        default="8b",
        help="the model size the cache stands for; 'all' measures each in turn, side by side",
    )
    parser.add_argument("--n-layers", type=int, help="override the size's number of layers")
    parser.add_argument("--d-mlp", type=int, help="override the size's MLP width")
    parser.add_argument("--n-prompts", type=int, default=1199)
    parser.add_argument("--d-model", type=int, default=64, help="width of the synthetic residual stream")
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/neuron-explorer-bench"))
    parser.add_argument("--terminal", default="120x40", help="terminal size, WxH")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    if args.size == "all":
        if args.n_layers or args.d_mlp:
            parser.error("--n-layers/--d-mlp override one size: use them with --size 8b or 70b")
        results = {}
        for name in SIZES:  # each size in its own interpreter: its resident memory is its own
            out = args.cache_dir / f"explorer-bench-{name}.json"
            args.cache_dir.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--size",
                    name,
                    "--n-prompts",
                    str(args.n_prompts),
                    "--d-model",
                    str(args.d_model),
                    "--cache-dir",
                    str(args.cache_dir),
                    "--terminal",
                    args.terminal,
                    "--json",
                    str(out),
                ],
                check=False,
            )
            results[name] = json.loads(out.read_text())
        failed = print_side_by_side(results, args.terminal)
    else:
        layers, width, _ = SIZES[args.size]
        args.n_layers, args.d_mlp = args.n_layers or layers, args.d_mlp or width
        figures = measure_size(args)
        if args.json:
            args.json.write_text(json.dumps(figures))
        failed = print_one(figures, args.terminal)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
