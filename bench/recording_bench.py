"""Recording benchmark: what recording costs next to the bare minimum and next to the authors' protocol.

For each model of the pair, on the same N prompts and in one run, it times
  bare     the same greedy generations with the KV cache and no hooks at all (the floor);
  record   `record_model`: recording every neuron while generating (the product's hot path);
  authors  the authors' protocol: `new_tokens` uncached full forward passes per batch, reading the last position
           each time through hooks (batched like ours, which favours them);
and prints record/bare and authors/record. Peak memory of the recording pass is measured for N and 2N prompts: on
a GPU the allocator's peak above the loaded model, on a CPU the peak resident set (VmHWM) of a fresh process that
loads the model and records, so nothing earlier in the run hides or inflates it. It must not grow with N.

Two more parts (`--parts`):
  compute  the whole `compute` (its default prompts: every recorded prompt of builtin:heldout) against the bare
           greedy generation of both models on the same prompts, with the logit-lens memo cold (emptied first) and
           warm (the second run of the same weights); target compute/bare ≤ 1.3
  memory   the peak resident set of a fresh process running the whole `compute` of a random-weight model as wide as
           the embedded one (30 layers × 1,536 neurons, so each prompt's row is the embedded size) on 1,000 and
           10,000 prompts: the per-prompt store streams to disk, so it must not grow tenfold

  python bench/recording_bench.py [--parts recording,compute,memory] [--prompts 64] [--base embedded]
                                  [--tuned embedded-dpo] [--device auto] [--memory-prompts 1000,10000]
Targets: record/bare ≤ 1.2, authors/record ≥ 5, peak memory flat in N, compute/bare ≤ 1.3.
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import tempfile
import time
from pathlib import Path

import torch

from neuron_explorer.engine.measure.prompts import load_prompts
from neuron_explorer.engine.model.generation import batches, encode_prompts, generate_tokens, special_token_ids
from neuron_explorer.engine.model.hooks import forward_hooks
from neuron_explorer.engine.model.loading import load_model
from neuron_explorer.engine.neurons.recording import record_model


def peak_cuda_mib(record, texts) -> float:
    """Peak CUDA memory allocated by one recording pass, above what was allocated before it."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    record(texts)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def _record_in_fresh_process(spec, texts, new_tokens, batch_size, results) -> None:
    loaded = load_model(spec, device="cpu")
    record_model(loaded, texts, new_tokens=new_tokens, batch_size=batch_size)
    with open("/proc/self/status") as handle:
        results.put(next(int(line.split()[1]) for line in handle if line.startswith("VmHWM")) / 1024)


def peak_rss_mib(spec, texts, new_tokens, batch_size) -> float:
    """Peak resident set of a fresh process that loads the model and records `texts`."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(target=_record_in_fresh_process, args=(spec, texts, new_tokens, batch_size, results))
    process.start()
    process.join()
    if process.exitcode != 0:
        raise SystemExit(f"the memory-measuring process failed (exit code {process.exitcode})")
    return results.get(timeout=10)


def bare(loaded, texts, new_tokens, batch_size):
    for _, chunk in batches(texts, batch_size):
        ids, mask = encode_prompts(loaded.tokenizer, chunk, 32, loaded.device)
        generate_tokens(loaded.model, ids, mask, new_tokens, suppress_ids=special_token_ids(loaded.tokenizer))


@torch.inference_mode()
def authors(loaded, texts, new_tokens, batch_size):
    """Uncached: each step reruns the whole sequence and hooks read the last position."""
    arch, model = loaded.arch, loaded.model
    sums = [torch.zeros(arch.d_mlp(model), dtype=torch.float64) for _ in range(arch.n_layers(model))]

    def hook(layer):
        def read_last_position(module, inputs, output) -> None:
            sums[layer].add_(inputs[0][:, -1].double().sum(0).cpu())

        return read_last_position

    suppress = special_token_ids(loaded.tokenizer)
    with forward_hooks([(arch.out_proj(model, layer), hook(layer)) for layer in range(len(sums))]):
        for _, chunk in batches(texts, batch_size):
            ids, mask = encode_prompts(loaded.tokenizer, chunk, 32, loaded.device)
            for _ in range(new_tokens):
                logits = (
                    model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0))
                    .logits[:, -1]
                    .float()
                )
                logits[:, suppress] = float("-inf")
                ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
                mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)


def timed(function, *args) -> float:
    start = time.perf_counter()
    function(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def whole_compute(args) -> None:
    """`compute` with its defaults against the bare generation of both models on the prompts it records."""
    from neuron_explorer.engine.measure.prompts import hold_out_for_patching
    from neuron_explorer.engine.model.weights import lens_memo
    from neuron_explorer.engine.neurons.compute import ComputeSettings, run_compute

    settings = ComputeSettings(base=args.base, tuned=args.tuned, device=args.device)
    texts = hold_out_for_patching(load_prompts(settings.prompts), settings.patch_holdout)[0].texts
    bare_seconds = 0.0
    for spec in (args.base, args.tuned):
        loaded = load_model(spec, device=args.device)
        bare(loaded, texts[: settings.recording.batch_size], 2, settings.recording.batch_size)  # warm-up
        bare_seconds += timed(bare, loaded, texts, settings.recording.new_tokens, settings.recording.batch_size)
        memo = lens_memo(loaded)
        if memo is not None:
            shutil.rmtree(memo, ignore_errors=True)  # the first compute below computes the lens
        del loaded
    recording = settings.recording
    print(
        f"\nwhole compute on {len(texts)} recorded prompts of {settings.prompts}, batch {recording.batch_size}, "
        f"{recording.new_tokens} new tokens; bare greedy generation of both models: {bare_seconds:.1f} s"
    )
    with tempfile.TemporaryDirectory() as folder:
        for label in ("lens memo cold", "lens memo warm"):
            settings.output = Path(folder) / "compute.h5"
            started = time.perf_counter()
            result = run_compute(settings)
            seconds = time.perf_counter() - started
            stages = ", ".join(f"{name} {value:.1f}s" for name, value in result.seconds.items())
            print(f"  {label}: {seconds:.1f} s = {seconds / bare_seconds:.2f}× bare ({stages})")


def _compute_in_fresh_process(folder: str, prompts: str, output: str, results) -> None:
    import os

    from neuron_explorer.engine.neurons.compute import ComputeSettings, run_compute
    from neuron_explorer.spec.settings import RecordingSettings

    os.environ["NEURON_EXPLORER_HOME"] = str(Path(output).with_suffix(".home"))  # its own, empty logit-lens memo

    run_compute(
        ComputeSettings(
            base=folder,
            tuned=folder + "-tuned",
            probe="toxic-embedding",
            prompts=prompts,
            output=Path(output),
            device="cpu",
            recording=RecordingSettings(new_tokens=4),
        )
    )
    with open("/proc/self/status") as handle:
        results.put(next(int(line.split()[1]) for line in handle if line.startswith("VmHWM")) / 1024)


def wide_random_pair(root: Path) -> str:
    """A random-weight Llama of the embedded model's width (30 × 1,536 neurons; narrow elsewhere, so it runs fast)
    with the embedded tokenizer, and a perturbed copy as its 'tuned' model."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from neuron_explorer.engine.model.loading import materialize_embedded

    tokenizer = AutoTokenizer.from_pretrained(materialize_embedded())
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    for name, noise in (("wide", 0.0), ("wide-tuned", 0.01)):
        with torch.no_grad():
            for param in model.parameters():
                param.add_(torch.randn_like(param) * noise)
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return str(root / "wide")


def memory_check(args) -> None:
    """Peak resident set of the whole `compute` on 1,000 and 10,000 prompts (each prompt a numbered variant)."""
    counts = [int(n) for n in args.memory_prompts.split(",")]
    base = load_prompts("builtin").texts
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        model = wide_random_pair(root)
        print("\nwhole compute of a random 30 × 1,536-neuron pair, 4 new tokens, peak resident set of a fresh process:")
        peaks = []
        for n in counts:
            prompts = root / f"prompts-{n}.txt"
            prompts.write_text("\n".join(f"{base[i % len(base)]} {i}" for i in range(n)) + "\n")
            context = multiprocessing.get_context("spawn")
            results = context.Queue()
            started = time.perf_counter()
            process = context.Process(
                target=_compute_in_fresh_process, args=(model, str(prompts), str(root / f"cache-{n}.h5"), results)
            )
            process.start()
            process.join()
            if process.exitcode != 0:
                raise SystemExit(f"the memory-measuring compute failed (exit code {process.exitcode})")
            peaks.append(results.get(timeout=10))
            size = (root / f"cache-{n}.h5").stat().st_size / 2**20
            print(
                f"  {n:>6} prompts ({n // 2} recorded): peak {peaks[-1]:.0f} MiB, cache {size:.0f} MiB, "
                f"{time.perf_counter() - started:.0f} s"
            )
        print(
            f"  peak at {counts[-1]:,} / at {counts[0]:,} prompts: {peaks[-1] / peaks[0]:.2f}× "
            f"(the prompts grew {counts[-1] / counts[0]:.0f}×)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--parts", default="recording,compute,memory", help="which parts to run, comma-separated (default: %(default)s)"
    )
    parser.add_argument("--memory-prompts", default="1000,10000", help="prompt counts of the memory part")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--base", default="embedded")
    parser.add_argument("--tuned", default="embedded-dpo")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2, help="take the best of this many timings")
    args = parser.parse_args()
    parts = args.parts.split(",")
    if "recording" in parts:
        recording(args)
    if "compute" in parts:
        whole_compute(args)
    if "memory" in parts:
        memory_check(args)


def recording(args) -> None:
    texts = load_prompts("builtin", max_prompts=2 * args.prompts).texts
    assert len(texts) >= 2 * args.prompts, "not enough built-in prompts for 2N"
    print(
        f"{args.prompts} prompts, batch {args.batch_size}, {args.new_tokens} new tokens, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    header = (
        f"{'model':<8}{'bare s':>9}{'record s':>10}{'authors s':>11}{'record/bare':>13}{'authors/record':>16}"
        f"{'peak MiB N':>12}{'peak MiB 2N':>13}"
    )
    print(header)
    for label, spec in (("base", args.base), ("tuned", args.tuned)):
        loaded = load_model(spec, device=args.device)
        subset = texts[: args.prompts]

        def record(texts_: list[str], loaded=loaded) -> None:
            record_model(loaded, texts_, new_tokens=args.new_tokens, batch_size=args.batch_size)

        bare(loaded, subset[: args.batch_size], 2, args.batch_size)  # warm-up
        times = {"bare": [], "record": [], "authors": []}
        for _ in range(args.repeats):  # interleaved, so that drifting machine load hits all three alike
            times["bare"].append(timed(bare, loaded, subset, args.new_tokens, args.batch_size))
            times["record"].append(timed(record, subset))
            times["authors"].append(timed(authors, loaded, subset, args.new_tokens, args.batch_size))
        best = {name: min(values) for name, values in times.items()}
        if loaded.device.type == "cuda":
            peaks = [peak_cuda_mib(record, texts[:n]) for n in (args.prompts, 2 * args.prompts)]
        else:
            peaks = [
                peak_rss_mib(spec, texts[:n], args.new_tokens, args.batch_size)
                for n in (args.prompts, 2 * args.prompts)
            ]
        print(
            f"{label:<8}{best['bare']:>9.2f}{best['record']:>10.2f}{best['authors']:>11.2f}"
            f"{best['record'] / best['bare']:>13.3f}{best['authors'] / best['record']:>16.2f}"
            f"{peaks[0]:>12.1f}{peaks[1]:>13.1f}"
        )
        del loaded


if __name__ == "__main__":
    main()
