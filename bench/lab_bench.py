"""Benchmark of the prompt lab on the embedded pair on this machine (not a test: run it by hand).

    .venv/bin/python bench/lab_bench.py [CACHE] [--requests 5]

Measures, side by side in one run:
  - launch: `python -m neuron_explorer lab CACHE --serve` started, a request sent at once; seconds to `ready` and to
    the first answer (imports and model loading included; the imports alone are measured in a fresh interpreter);
  - per request in the warm worker, without and with a patched run (shift of group TP↓), the round trip and each
    pass's share (base and patched run as one batch of two rows, then DPO); beside it, the floor: bare greedy
    generation of the same prompts (our KV-cache loop, no hooks, the same number of forward calls and rows) by the
    same models in this process, so the ratio says what the lab adds to the generation;
  - the explorer's frames while the worker computes: the real app headless with the real worker, the Lab screen
    running requests; the longest stall of the app's event loop (a 10 ms timer's worst lateness: no frame can be
    drawn during a stall, and a long frame is one), overall and in the half second after each answer (drawing it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROMPTS = [
    "You are such a stupid idiot and I will",
    "Shut up, you worthless piece of",
    "The river runs through the",
    "I hate you so much, you",
    "She walked to the market and",
]
IMPORT_PROBE = (
    "import time; t = time.perf_counter(); import neuron_explorer.engine.lab.session, "
    "neuron_explorer.engine.lab.worker; print(time.perf_counter() - t)"
)


def worker_process(cache: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "neuron_explorer", "lab", str(cache), "--serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        bufsize=1,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def read_until(process: subprocess.Popen, kinds: tuple[str, ...]) -> tuple[dict, float]:
    for line in process.stdout:
        if not line.startswith("{"):
            continue
        event = json.loads(line)
        if event.get("event") in kinds:
            return event, time.perf_counter()
        if event.get("event") == "failed":
            raise SystemExit(f"the worker failed: {event['message']}")
    raise SystemExit("the worker exited")


def measure_worker(cache: Path, n_requests: int) -> dict:
    from neuron_explorer.engine.lab.protocol import QuitRequest, RunRequest
    from neuron_explorer.spec.intervention import Intervention

    started = time.perf_counter()
    process = worker_process(cache)
    process.stdin.write(RunRequest(0, PROMPTS[0]).to_json() + "\n")
    process.stdin.flush()
    _, ready_at = read_until(process, ("ready",))
    _, answered_at = read_until(process, ("answer",))
    figures = {"ready": ready_at - started, "first answer": answered_at - started, "plain": [], "patched": []}
    for index in range(n_requests):
        for kind, patched in (("plain", None), ("patched", Intervention("shift", ("group:TP↓",)))):
            request = RunRequest(
                len(figures[kind]) + 10 * (kind == "patched") + 1, PROMPTS[index % len(PROMPTS)], patched
            )
            sent = time.perf_counter()
            process.stdin.write(request.to_json() + "\n")
            process.stdin.flush()
            answer, received = read_until(process, ("answer",))
            figures[kind].append({"round trip": received - sent, **answer["result"]["seconds"]})
    process.stdin.write(QuitRequest().to_json() + "\n")
    process.stdin.flush()
    process.wait(60)
    return figures


def measure_bare_generation(n_requests: int) -> dict:
    """Our generation loop without hooks, on the same prompts and models: the floor of a lab request."""
    import torch

    from neuron_explorer.engine.model.generation import encode_prompts, generate_tokens, special_token_ids
    from neuron_explorer.engine.model.loading import EMBEDDED_BASE, EMBEDDED_TUNED, load_model

    seconds = {}
    for name, spec, rows in (("base", EMBEDDED_BASE, 1), ("base ×2", EMBEDDED_BASE, 2), ("dpo", EMBEDDED_TUNED, 1)):
        loaded = load_model(spec, device="cpu", dtype="float32")
        samples = []
        for index in range(n_requests + 1):
            ids, mask = encode_prompts(loaded.tokenizer, [PROMPTS[index % len(PROMPTS)]] * rows, 32)
            begun = time.perf_counter()
            with torch.inference_mode():
                generate_tokens(
                    loaded.model, ids, mask, 20, suppress_ids=special_token_ids(loaded.tokenizer), feed_last=True
                )
            samples.append(time.perf_counter() - begun)
        seconds[name] = statistics.median(samples[1:])  # the first call warms up
    return seconds


async def measure_app(cache: Path, n_requests: int) -> dict:
    """The real app, headless, with the real worker: how late a 10 ms timer of the app's event loop fires while
    requests are computed and their answers drawn (no frame can be drawn during such a stall, and a frame that takes
    long is one)."""
    from neuron_explorer.explorer.app import ExplorerApp
    from neuron_explorer.explorer.state import Store

    app = ExplorerApp(Store.open(cache))
    lateness: list[tuple[float, float]] = []  # (when, how late)
    answered: list[float] = []
    async with app.run_test(size=(120, 40)) as pilot:
        await app.workers.wait_for_complete()
        await pilot.press("5")
        expected = time.perf_counter() + 0.01

        def tick() -> None:
            nonlocal expected
            now = time.perf_counter()
            lateness.append((now, now - expected))
            expected = now + 0.01

        app.set_interval(0.01, tick)
        client = app.lab
        while client.state != "ready":
            await asyncio.sleep(0.05)
        lateness.clear()
        for index in range(n_requests):
            app.lab_run(PROMPTS[index % len(PROMPTS)])
            attempt = client.history[-1]
            while attempt.result is None:
                await asyncio.sleep(0.01)
            answered.append(time.perf_counter())
            await asyncio.sleep(0.5)  # the answer is drawn meanwhile
        await pilot.press("q")
    app.store.reader.close()
    near_answers = [late for when, late in lateness if any(0 <= when - at <= 0.5 for at in answered)]
    return {
        "stall": max(late for _, late in lateness),
        "answer stall": max(near_answers, default=float("nan")),
        "ticks": len(lateness),
    }


def main() -> int:
    from neuron_explorer.engine.defaults import default_cache_path

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cache", nargs="?", type=Path, default=default_cache_path())
    parser.add_argument("--requests", type=int, default=5, help="requests of each kind (%(default)s)")
    args = parser.parse_args()
    if not args.cache.exists():
        raise SystemExit(f"{args.cache} does not exist: run `neuron-explorer build` first")
    imports = min(
        float(subprocess.run([sys.executable, "-c", IMPORT_PROBE], capture_output=True, text=True, check=True).stdout)
        for _ in range(3)
    )
    # the app first: freeing the models this process loads later leaves garbage whose collection stalls an event loop
    app = asyncio.run(measure_app(args.cache, args.requests))
    worker = measure_worker(args.cache, args.requests)
    bare = measure_bare_generation(args.requests)

    def median(kind: str, key: str) -> float:
        return statistics.median(sample[key] for sample in worker[kind])

    floor_plain = bare["base"] + bare["dpo"]
    floor_patched = bare["base ×2"] + bare["dpo"]
    rows = [
        ("worker imports (fresh interpreter)", None, imports),
        ("launch → ready (imports, both models)", None, worker["ready"]),
        ("launch → first answer", 5.0, worker["first answer"]),
        ("request, base + DPO (median round trip)", None, median("plain", "round trip")),
        ("  bare generation of both (floor)", None, floor_plain),
        ("request, base + DPO + patched", 1.5, median("patched", "round trip")),
        ("  base + patched (one batch of two rows)", None, median("patched", "base + patched")),
        ("  DPO", None, median("patched", "dpo")),
        ("  bare generation, base ×2 rows + DPO (floor)", None, floor_patched),
        ("app: worst event-loop stall (frame) while computing", 0.100, app["stall"]),
        ("app: worst stall within 0.5 s of an answer (drawing it)", 0.100, app["answer stall"]),
    ]
    print(
        f"\nlab benchmark: {args.cache.name}, {args.requests} requests of each kind, 20 new tokens, "
        f"{os.cpu_count()} CPUs, torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}\n"
    )
    print(f"{'measure':<56}{'target':>9}{'measured':>11}  ok")
    failed = False
    for name, target, value in rows:
        ok = "" if target is None else ("yes" if value <= target else "NO")
        failed |= ok == "NO"
        target_text = "—" if target is None else (f"≤{target:.1f} s" if target >= 1 else f"≤{target * 1000:.0f} ms")
        shown = f"{value:.2f} s" if value >= 1 else f"{value * 1000:.0f} ms"
        print(f"{name:<56}{target_text:>9}{shown:>11}  {ok}")
    ratio = median("patched", "round trip") / floor_patched
    print(
        f"\nthe lab's request / bare generation of the same runs: {ratio:.2f} "
        f"(base+DPO only: {median('plain', 'round trip') / floor_plain:.2f})"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
