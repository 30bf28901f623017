"""Scale benchmark: the tool at the shapes users bring, measured side by side with the embedded pair (not a test).

    .venv/bin/python bench/scale_bench.py [--sizes embedded,1b] [--prompts 24] [--new-tokens 20] [--batch-size 8]
                                          [--device auto] [--dtype auto] [--json FILE] [--markdown FILE]

Builds once, from a config only, a random-weight pair of each size (`SHAPES`: `1b` is shaped like Llama-3.2-1B,
16 layers × 8,192 MLP neurons, d_model 2,048, 32/8 attention heads, vocabulary 128,256, untied embeddings; `8b` like
Llama-3.1-8B; `tiny` for a quick check), saved as safetensors (bfloat16, as the hub ships them) under
~/.cache/neuron-explorer/bench/; the tuned model is the base plus small noise. `embedded` is the real
SmolLM2-135M-Instruct and a noised copy of it (the same recipe, so no build is needed). Every pair uses SmolLM2's
tokenizer (the larger vocabulary's other ids decode to nothing), but `tiny`, whose small BPE is trained on the spot.

Each part runs in a fresh process, so that its peak memory is its own (a CPU's peak resident set, a GPU's peak
allocation):
  bare      greedy generation of both models on the recorded prompts (our KV-cache loop, no hooks): the floor
  compute   the whole `compute` (lens memo empty: a first run), its stages apart: recording, identity check,
            weights, the value-vector lens, statistics with clustering, loading
  plan      `compute --plan`'s time and memory estimate (a warm-up batch), against compute's measured figures
  patch     a patch run's evaluation (shift of group TP↓) against the same evaluation without hooks
  lab       a lab request (base and DPO, no intervention) against the bare generation of the same prompt
  explorer  the explorer on the computed cache: first screen, re-sort, layer switch (bench/explorer_bench.py)
  torchrun  (not by default) the same compute under `torchrun --nproc_per_node 1`, wall time with its start-up

and prints one table, each size a column, the last column the growth from the first size to the last.
Targets (issue 22): recording ≤ 1.1× bare, compute ≤ 1.3× bare on a first run, a patch run ≤ 1.1× its evaluation
without hooks, --plan within ±25% of the measured time and memory, compute's peak memory ≤ 1.3× the two models'
weights.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

BENCH = Path(__file__).resolve().parent
# name: (layers, MLP neurons, d_model, attention heads, key/value heads, vocabulary)
SHAPES = {
    "tiny": (2, 256, 64, 4, 2, 1024),
    "1b": (16, 8192, 2048, 32, 8, 128256),
    "8b": (32, 14336, 4096, 32, 8, 128256),
}
NOISE = 1e-3  # the tuned copy: each weight plus this × its tensor's standard deviation × N(0, 1)
PATCH = ("shift", ("group:TP↓",))
LAB_PROMPT = "You are such a stupid idiot and I will"


# -- the pairs ----------------------------------------------------------------------------------------------------


def pair_folder(size: str) -> Path:
    from neuron_explorer.engine.defaults import cache_home

    return cache_home() / "bench" / f"pair-{size}"


def build_pair(size: str) -> tuple[Path, Path]:
    """The base and tuned folders of a size, built once (a folder with config.json and weights counts as built)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from neuron_explorer.cache.atomic import atomic_path
    from neuron_explorer.engine.model.loading import materialize_embedded

    root = pair_folder(size)
    base, tuned = root / "base", root / "tuned"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if all((folder / "config.json").exists() and any(folder.glob("*.safetensors")) for folder in (base, tuned)):
        return base, tuned
    root.mkdir(parents=True, exist_ok=True)
    tokenizer = quick_tokenizer() if size == "tiny" else AutoTokenizer.from_pretrained(materialize_embedded())
    started = time.perf_counter()
    if size == "embedded":
        model = AutoModelForCausalLM.from_pretrained(materialize_embedded(), dtype=torch.float32)
    else:
        layers, d_mlp, d_model, heads, kv_heads, vocab = SHAPES[size]
        config = LlamaConfig(
            vocab_size=vocab,
            hidden_size=d_model,
            intermediate_size=d_mlp,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            max_position_embeddings=2048,
            tie_word_embeddings=False,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            rope_theta=500000.0,
        )
        torch.manual_seed(0)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)  # half the memory while it is built; saved as the hub ships it
        try:
            with torch.device(device):  # a GPU initialises an 8B model in seconds, a CPU in minutes
                model = AutoModelForCausalLM.from_config(config)
        finally:
            torch.set_default_dtype(previous)
    for folder, noisy in ((base, False), (tuned, True)):
        if noisy:
            generator = torch.Generator(device=model.device).manual_seed(1)
            with torch.no_grad():
                for parameter in model.parameters():
                    scale = NOISE * parameter.float().std().item()
                    noise = torch.randn(parameter.shape, generator=generator, device=parameter.device) * scale
                    parameter.add_(noise.to(parameter.dtype))
        with atomic_path(folder) as partial:
            model.save_pretrained(partial)
            tokenizer.save_pretrained(partial)
    print(f"built the {size} pair in {time.perf_counter() - started:.0f} s: {root}", flush=True)
    return base, tuned


def prepare_prompts(path: Path, count: int) -> None:
    """`count` prompts, one a line: the builtin ones, repeated (numbered) when more are needed (1,199 for the GPU
    check, as many as RealToxicityPrompts' challenging subset that the papers record)."""
    from neuron_explorer.engine.measure.prompts import load_prompts

    texts = load_prompts("builtin").texts
    lines = [texts[i % len(texts)] + (f" ({i // len(texts)})" if i >= len(texts) else "") for i in range(count)]
    path.write_text("\n".join(line.replace("\n", " ") for line in lines) + "\n")


def quick_tokenizer():
    """A byte-level BPE trained in a blink on the builtin prompts (the tiny shape needs no embedded model)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from neuron_explorer.engine.measure.prompts import load_prompts

    core = Tokenizer(models.BPE(unk_token=None))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=SHAPES["tiny"][-1],
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(load_prompts("builtin").texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|endoftext|>", pad_token="<|endoftext|>", bos_token="<|endoftext|>"
    )


# -- one part in a fresh process ----------------------------------------------------------------------------------


def peak_memory_mib(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def compute_settings(args, base: Path, tuned: Path, output: Path):
    from neuron_explorer.engine.neurons.compute import ComputeSettings
    from neuron_explorer.spec.settings import RecordingSettings

    return ComputeSettings(
        base=str(base),
        tuned=str(tuned),
        probe="toxic-embedding",
        prompts=args.prompt_source,
        max_prompts=round(args.prompts / (1 - args.patch_holdout)),
        patch_holdout=args.patch_holdout,
        recording=RecordingSettings(new_tokens=args.new_tokens, batch_size=args.batch_size),
        device=args.device,
        dtype=args.dtype,
        output=output,
    )


def recorded_texts(settings) -> list[str]:
    from neuron_explorer.engine.measure.prompts import hold_out_for_patching, load_prompts

    prompts = load_prompts(settings.prompts, max_prompts=settings.max_prompts)
    return hold_out_for_patching(prompts, settings.patch_holdout)[0].texts


def synchronized(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def part_bare(args, base, tuned, cache) -> dict:
    import torch

    from neuron_explorer.engine.model.generation import batches, encode_prompts, generate_tokens, special_token_ids
    from neuron_explorer.engine.model.loading import load_model

    settings = compute_settings(args, base, tuned, cache)
    texts = recorded_texts(settings)
    seconds, weight_bytes, device = 0.0, 0, "cpu"
    loaded_models = [load_model(str(folder), device=args.device, dtype=args.dtype) for folder in (base, tuned)]
    for loaded in loaded_models:
        device = str(loaded.device)
        weight_bytes += sum(p.numel() * p.element_size() for p in loaded.model.parameters())
        suppress = special_token_ids(loaded.tokenizer)
        with torch.inference_mode():
            truncation = settings.recording.max_prompt_tokens
            ids, mask = encode_prompts(loaded.tokenizer, texts[:2], truncation, loaded.device)
            generate_tokens(loaded.model, ids, mask, 2, suppress_ids=suppress)  # warm-up
            synchronized(device)
            started = time.perf_counter()
            for _, chunk in batches(texts, settings.recording.batch_size):
                ids, mask = encode_prompts(loaded.tokenizer, chunk, truncation, loaded.device)
                generate_tokens(loaded.model, ids, mask, settings.recording.new_tokens, suppress_ids=suppress)
            synchronized(device)
            seconds += time.perf_counter() - started
    first = loaded_models[0]
    return {
        "seconds": seconds,
        "peak_mib": peak_memory_mib(device),
        "weights_mib": weight_bytes / 2**20,
        "device": device,
        "dtype": str(next(first.model.parameters()).dtype).removeprefix("torch."),
        "prompts": len(texts),
        "neurons": first.arch.n_layers(first.model) * first.arch.d_mlp(first.model),
        "params": sum(p.numel() for p in first.model.parameters()),
    }


@contextmanager
def empty_home() -> Iterator[None]:
    """An empty logit-lens memo for the block (a first run), whatever earlier runs of the same weights left: the
    embedded pair's base is byte for byte the embedded model, whose memo a build fills."""
    previous = os.environ.get("NEURON_EXPLORER_HOME")
    with tempfile.TemporaryDirectory() as home:
        os.environ["NEURON_EXPLORER_HOME"] = home
        try:
            yield
        finally:
            if previous is None:
                del os.environ["NEURON_EXPLORER_HOME"]
            else:
                os.environ["NEURON_EXPLORER_HOME"] = previous


def part_compute(args, base, tuned, cache) -> dict:
    from neuron_explorer.engine.neurons.compute import run_compute

    with empty_home():
        started = time.perf_counter()
        result = run_compute(compute_settings(args, base, tuned, cache))
        seconds = time.perf_counter() - started
    from neuron_explorer.cache.reader import CacheReader

    with CacheReader(cache) as reader:
        rule = reader.lens_rule()
    return {
        "seconds": seconds,
        "stages": result.seconds,
        "peak_mib": peak_memory_mib(args.device_resolved),
        "lens": rule,
    }


def part_plan(args, base, tuned, cache) -> dict:
    from neuron_explorer.engine.neurons.compute import plan_compute_run, warm_up

    settings = compute_settings(args, base, tuned, cache)
    with empty_home():  # as compute measured it: a first run
        plan, texts = plan_compute_run(settings)
        estimate = warm_up(plan, settings, texts)
    return {"seconds": estimate["total"], "estimate": estimate, "memory_mib": plan.need("device") / 2**20}


def part_patch(args, base, tuned, cache) -> dict:
    from neuron_explorer.engine.measure.evaluation import evaluate
    from neuron_explorer.engine.model.loading import load_model
    from neuron_explorer.engine.patching.runs import PatchSession
    from neuron_explorer.spec.intervention import Intervention
    from neuron_explorer.spec.settings import RUN_EVALUATION, RunSettings

    evaluation = replace(
        RUN_EVALUATION, ppl_windows=args.ppl_windows, f1_items=2 * args.ppl_windows, batch_size=args.batch_size
    )
    settings = RunSettings(
        prompts="builtin:heldout",
        max_prompts=args.patch_prompts,
        evaluation=evaluation,
        base=str(base),
        tuned=str(tuned),
        device=args.device,
        dtype=args.dtype,
    )
    loaded = load_model(str(base), device=args.device, dtype=args.dtype)
    with PatchSession(cache, settings, loaded=loaded) as session:
        intervention, _ = session.intervention(Intervention(PATCH[0], PATCH[1]))

        def plain() -> None:
            evaluate(
                loaded, session.prompts.texts, session.scorer, settings=session.eval_settings, inputs=session.inputs
            )

        def patched() -> None:
            session.measure(loaded, "bench", intervention)

        times: dict[str, list[float]] = {"plain": [], "patched": []}
        for job in (plain, patched) * args.repeats:  # interleaved: the machine is shared
            synchronized(args.device_resolved)
            started = time.perf_counter()
            job()
            synchronized(args.device_resolved)
            times[job.__name__].append(time.perf_counter() - started)
    return {
        "plain": min(times["plain"]),
        "patched": min(times["patched"]),
        "neurons": intervention.n_neurons,
        "peak_mib": peak_memory_mib(args.device_resolved),
    }


def part_lab(args, base, tuned, cache) -> dict:
    import torch

    from neuron_explorer.engine.lab.protocol import RunRequest
    from neuron_explorer.engine.lab.session import LabSession
    from neuron_explorer.engine.model.generation import encode_prompts, generate_tokens, special_token_ids

    with LabSession(cache, base=str(base), tuned=str(tuned), device=args.device, dtype=args.dtype) as session:
        requests = []
        for index in range(args.repeats + 1):  # the first warms up
            started = time.perf_counter()
            session.answer(RunRequest(index, LAB_PROMPT))
            requests.append(time.perf_counter() - started)
        bare = []
        for _ in range(args.repeats + 1):
            total = 0.0
            for loaded in (session.loaded, session.tuned()):
                ids, mask = encode_prompts(
                    loaded.tokenizer, [LAB_PROMPT], session.protocol.max_prompt_tokens, loaded.device
                )
                started = time.perf_counter()
                with torch.inference_mode():
                    generate_tokens(
                        loaded.model,
                        ids,
                        mask,
                        session.protocol.new_tokens,
                        suppress_ids=special_token_ids(loaded.tokenizer),
                        feed_last=True,
                    )
                synchronized(args.device_resolved)
                total += time.perf_counter() - started
            bare.append(total)
    return {"request": statistics.median(requests[1:]), "bare": statistics.median(bare[1:])}


def part_explorer(args, base, tuned, cache) -> dict:
    import asyncio

    sys.path.insert(0, str(BENCH))
    import explorer_bench

    from neuron_explorer.cache.reader import CacheReader

    with CacheReader(cache) as reader:
        n_layers = reader.info.n_layers
    figures = asyncio.run(explorer_bench.measure(cache, (120, 40), n_layers))
    return {
        "first screen": figures["first screen"],
        "re-sort": statistics.median(figures["re-sort"]),
        "layer switch": statistics.median(figures["layer switch"]),
        "resident_mb": figures["resident memory"],
    }


def part_torchrun(args, base, tuned, cache) -> dict:
    """The same compute under `torchrun --nproc_per_node 1` (wall time with the launcher's start-up)."""
    settings = compute_settings(args, base, tuned, cache.with_name(cache.stem + "-torchrun.h5"))
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "1",
        "-m",
        "neuron_explorer",
        "compute",
        "--base",
        settings.base,
        "--tuned",
        settings.tuned,
        "--probe",
        settings.probe,
        "--prompts",
        settings.prompts,
        "--max-prompts",
        str(settings.max_prompts),
        "--patch-holdout",
        str(settings.patch_holdout),
        "--new-tokens",
        str(settings.recording.new_tokens),
        "--batch-size",
        str(settings.recording.batch_size),
        "--device",
        settings.device,
        "--dtype",
        settings.dtype,
        "-o",
        str(settings.output),
    ]
    with tempfile.TemporaryDirectory() as home:
        started = time.perf_counter()
        done = subprocess.run(command, env={**os.environ, "NEURON_EXPLORER_HOME": home}, capture_output=True, text=True)
        seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"torchrun compute failed: {done.stderr[-2000:]}")
    return {"seconds": seconds}


PARTS = {
    "bare": part_bare,
    "compute": part_compute,
    "plan": part_plan,
    "patch": part_patch,
    "lab": part_lab,
    "explorer": part_explorer,
    "torchrun": part_torchrun,
}
DEFAULT_PARTS = ("bare", "compute", "explorer", "plan", "patch", "lab")


def measure_here(args, size: str, part: str) -> dict:
    """One part of one size in this process."""
    import torch

    from neuron_explorer.engine.model.loading import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    args.device_resolved = resolve_device(args.device)
    base, tuned = (pair_folder(size) / name for name in ("base", "tuned"))
    started = time.perf_counter()
    figures = PARTS[part](args, base, tuned, Path(args.work) / f"{size}.h5")
    print(f"  {size} {part}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return figures


def measure_in_child(args, size: str, part: str) -> dict:
    command = [
        sys.executable,
        __file__,
        "--part",
        part,
        "--size",
        size,
        "--work",
        str(args.work),
        "--prompts",
        str(args.prompts),
        "--new-tokens",
        str(args.new_tokens),
        "--batch-size",
        str(args.batch_size),
        "--device",
        args.device,
        "--dtype",
        args.dtype,
        "--patch-prompts",
        str(args.patch_prompts),
        "--threads",
        str(args.threads),
        "--prompt-source",
        args.prompt_source,
        "--patch-holdout",
        str(args.patch_holdout),
        "--repeats",
        str(args.repeats),
        "--ppl-windows",
        str(args.ppl_windows),
    ]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        print(done.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"the {part} part of {size} failed (exit {done.returncode})")
    print(f"  {size} {part}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- the table ----------------------------------------------------------------------------------------------------


def rows(figures: dict) -> list[tuple[str, str, float, str]]:
    """(measure, unit, value, target) of one size, for the parts it has: unit n, s, ms, MiB or × (a ratio; the
    target an upper bound, or a band for the plan's ±25%)."""
    bare, compute = figures.get("bare"), figures.get("compute")
    out = []
    if bare:
        out += [
            ("neurons", "n", bare["neurons"], ""),
            ("parameters per model", "n", bare["params"], ""),
            ("two models' weights", "MiB", bare["weights_mib"], ""),
            ("bare greedy generation, both models", "s", bare["seconds"], ""),
            ("  its peak memory", "MiB", bare["peak_mib"], ""),
        ]
    if bare and compute:
        stages = compute["stages"]
        recording = stages["record_pre"] + stages["record_dpo"]
        out += [
            ("compute, whole (first run)", "s", compute["seconds"], ""),
            ("  / bare", "×", compute["seconds"] / bare["seconds"], "≤ 1.3"),
            ("  recording, both models", "s", recording, ""),
            ("  recording / bare", "×", recording / bare["seconds"], "≤ 1.1"),
            ("  identity check", "s", stages["identity"], ""),
            ("  weights (projections, cosines)", "s", stages["weights"], ""),
            ("  value-vector lens", "s", stages["lens"], ""),
            ("  statistics and clustering", "s", stages["statistics"], ""),
            ("  loading", "s", stages["load"], ""),
            ("  lens neurons computed", "n", compute["lens"].get("computed") or bare["neurons"], ""),
            ("  peak memory", "MiB", compute["peak_mib"], ""),
            ("  peak memory / weights", "×", compute["peak_mib"] / bare["weights_mib"], "≤ 1.3"),
        ]
    if compute and "plan" in figures:
        plan = figures["plan"]
        out += [
            ("--plan estimate", "s", plan["seconds"], ""),
            ("  estimate / measured time", "×", plan["seconds"] / compute["seconds"], "0.75–1.25"),
            ("  memory estimate / measured peak", "×", plan["memory_mib"] / compute["peak_mib"], "0.75–1.25"),
        ]
    if "patch" in figures:
        patch = figures["patch"]
        out += [
            ("evaluation without hooks", "s", patch["plain"], ""),
            (f"patch run ({PATCH[0]} {PATCH[1][0]})", "s", patch["patched"], ""),
            ("  patch run / without hooks", "×", patch["patched"] / patch["plain"], "≤ 1.1"),
        ]
    if "lab" in figures:
        lab = figures["lab"]
        out += [
            ("lab request (base + DPO)", "s", lab["request"], ""),
            ("  its bare generation", "s", lab["bare"], ""),
            ("  request / bare", "×", lab["request"] / lab["bare"], ""),
        ]
    if compute and "torchrun" in figures:
        out += [
            ("torchrun --nproc_per_node 1 compute (wall)", "s", figures["torchrun"]["seconds"], ""),
            ("  / compute in one process", "×", figures["torchrun"]["seconds"] / compute["seconds"], ""),
        ]
    if "explorer" in figures:
        explorer = figures["explorer"]
        out += [
            ("explorer first screen", "ms", explorer["first screen"] * 1000, "≤ 500"),
            ("explorer re-sort (median)", "ms", explorer["re-sort"] * 1000, "≤ 150"),
            ("explorer layer switch (median)", "ms", explorer["layer switch"] * 1000, "≤ 100"),
            ("explorer resident memory", "MiB", explorer["resident_mb"], "≤ 1024"),
        ]
    return out


def meets(value: float, target: str) -> str:
    if not target:
        return ""
    if "–" in target:
        low, high = (float(part) for part in target.split("–"))
        return "yes" if low <= value <= high else "NO"
    return "yes" if value <= float(target.removeprefix("≤ ")) else "NO"


def shown(value: float, unit: str) -> str:
    if unit == "n":
        return f"{value:,.0f}"
    if unit == "×":
        return f"{value:.2f}×"
    if unit == "s":
        return f"{value:.1f} s" if value >= 1 else f"{value * 1000:.0f} ms"
    return f"{value:,.0f} {unit}"


def table(results: dict[str, dict], markdown: bool) -> str:
    """Each size a column (a measure a size lacks shows —), then the last size over the first."""
    names = list(results)
    grown = len(names) > 1
    header = ["measure", *names, *([f"{names[-1]}/{names[0]}"] if grown else []), "target"]
    measured = {
        name: {label: (unit, value, target) for label, unit, value, target in rows(results[name])} for name in names
    }
    labels = list(dict.fromkeys(label for name in names for label in measured[name]))
    body = []
    for label in labels:
        found = [measured[name].get(label) for name in names]
        unit, _, target = next(entry for entry in found if entry)
        cells = [label]
        for entry in found:
            if entry is None:
                cells.append("—")
                continue
            verdict = meets(entry[1], target)
            cells.append(shown(entry[1], unit) + (f" {verdict}" if verdict else ""))
        if grown:
            first, last = found[0], found[-1]
            cells.append(f"{last[1] / first[1]:.2f}×" if first and last and first[1] else "—")
        cells.append(target)
        body.append(cells)
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
        return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in body])
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row))
        for row in [header, *body]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="embedded,1b", help="comma-separated: embedded, " + ", ".join(SHAPES))
    parser.add_argument("--parts", default=",".join(DEFAULT_PARTS), help="comma-separated: " + ", ".join(PARTS))
    parser.add_argument("--prompts", type=int, default=24, help="recorded prompts")
    parser.add_argument("--prompt-source", default="builtin:heldout", help="compute's --prompts (builtin:heldout)")
    parser.add_argument(
        "--patch-holdout",
        type=float,
        default=0.5,
        help="compute's --patch-holdout: the share of the source kept aside (0.5)",
    )
    parser.add_argument("--new-tokens", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--patch-prompts", type=int, default=8, help="prompts of the patch run's evaluation")
    parser.add_argument(
        "--ppl-windows", type=int, default=2, help="the patch run's perplexity windows (and twice as many F1 passages)"
    )
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats of the patch run and the lab request")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--work", type=Path, default=None, help="where the caches go (default: a temporary folder)")
    parser.add_argument("--build-only", action="store_true", help="build the pairs and stop")
    parser.add_argument("--table-from", type=Path, help="print the table of a --json file written earlier and stop")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="every part in this process (quick; the peak memory figures are then the process's)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--markdown", type=Path, help="also write the table here as markdown")
    parser.add_argument(
        "--prepare-prompts",
        action="store_true",
        help="write --prompt-source (a .txt path) first: the builtin prompts, repeated as needed",
    )
    parser.add_argument("--part", choices=list(PARTS), help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.table_from:
        print(table(json.loads(args.table_from.read_text()), markdown=bool(args.markdown)))
        return 0
    if args.part:  # in the child process: the figures as JSON on the last line of stdout
        print(json.dumps(measure_here(args, args.size, args.part)))
        return 0
    sizes = args.sizes.split(",")
    unknown = [size for size in sizes if size != "embedded" and size not in SHAPES]
    if unknown:
        parser.error(f"unknown size {unknown[0]}: choose from embedded, {', '.join(SHAPES)}")
    parts = list(dict.fromkeys(args.parts.split(",")))  # in the order given
    if not set(parts) <= set(PARTS):
        parser.error(f"unknown part in {args.parts}: choose from {', '.join(PARTS)}")
    if not {"bare", "compute"} <= set(parts):
        parser.error("--parts needs bare and compute (every ratio is taken against them)")
    if args.prepare_prompts:
        prepare_prompts(Path(args.prompt_source), round(args.prompts / (1 - args.patch_holdout)))
    for size in sizes:
        build_pair(size)
    if args.build_only:
        return 0
    temporary = None if args.work else tempfile.TemporaryDirectory(prefix="scale-bench-")
    args.work = args.work or Path(temporary.name)
    args.work.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {size: {} for size in sizes}
    started, load_before = time.perf_counter(), os.getloadavg()[1]
    measure = measure_here if args.in_process else measure_in_child
    try:
        for part in parts:  # each part for every size in turn: a run stopped early has its first parts side by side
            for size in sizes:
                try:
                    results[size][part] = measure(args, size, part)
                except SystemExit as failure:  # the other parts still run: the table shows — for this one
                    print(f"  {size} {part}: {failure}", file=sys.stderr, flush=True)
                    continue
                if args.json:  # after every part: a run stopped early keeps what it measured
                    args.json.write_text(json.dumps(results, indent=1))
    finally:
        if temporary is not None:
            temporary.cleanup()
    first = results[sizes[0]]["bare"]
    print(
        f"\nscale benchmark: {first['prompts']} recorded prompts, {args.new_tokens} new tokens, batch "
        f"{args.batch_size}, {first['device']} in {first['dtype']}, {time.perf_counter() - started:.0f} s in all; "
        f"load average (5 min) {load_before:.1f} before, {os.getloadavg()[1]:.1f} after, {os.cpu_count()} cores\n"
    )
    print(table(results, markdown=False))
    if args.markdown:
        args.markdown.write_text(table(results, markdown=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
