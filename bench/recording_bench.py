"""Recording benchmark: what recording costs next to the bare minimum and next to the authors' protocol.

For each model of the pair, on the same N prompts and in one run, it times
  bare     the same greedy generations with the KV cache and no hooks at all (the floor);
  record   `record_model`: recording every neuron while generating (the product's hot path);
  authors  the authors' protocol: `new_tokens` uncached full forward passes per batch, reading the last position
           each time through hooks (batched like ours, which favours them);
and prints record/bare and authors/record. Peak memory of the recording pass is measured for N and 2N prompts: on
a GPU the allocator's peak above the loaded model, on a CPU the peak resident set (VmHWM) of a fresh process that
loads the model and records, so nothing earlier in the run hides or inflates it. It must not grow with N.

  python bench/recording_bench.py [--prompts 64] [--base embedded] [--tuned embedded-dpo] [--device auto]
Targets: record/bare ≤ 1.2, authors/record ≥ 5, peak memory flat in N.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time

import torch

from neuron_explorer.engine.model.generation import special_token_ids, batches, encode_prompts, generate_tokens
from neuron_explorer.engine.model.hooks import forward_hooks
from neuron_explorer.engine.model.loading import load_model
from neuron_explorer.engine.alignment.prompts import load_prompts
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
    process = context.Process(target=_record_in_fresh_process,
                              args=(spec, texts, new_tokens, batch_size, results))
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
                logits = model(input_ids=ids, attention_mask=mask,
                               position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits[:, -1].float()
                logits[:, suppress] = float("-inf")
                ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
                mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)


def timed(function, *args) -> float:
    start = time.perf_counter()
    function(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--base", default="embedded")
    parser.add_argument("--tuned", default="embedded-dpo")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2, help="take the best of this many timings")
    args = parser.parse_args()
    texts = load_prompts("builtin", max_prompts=2 * args.prompts).texts
    assert len(texts) >= 2 * args.prompts, "not enough built-in prompts for 2N"
    print(f"{args.prompts} prompts, batch {args.batch_size}, {args.new_tokens} new tokens, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    header = f"{'model':<8}{'bare s':>9}{'record s':>10}{'authors s':>11}{'record/bare':>13}{'authors/record':>16}" \
             f"{'peak MiB N':>12}{'peak MiB 2N':>13}"
    print(header)
    for label, spec in (("base", args.base), ("tuned", args.tuned)):
        loaded = load_model(spec, device=args.device)
        subset = texts[:args.prompts]
        def record(texts_: list[str], loaded=loaded) -> None:
            record_model(loaded, texts_, new_tokens=args.new_tokens, batch_size=args.batch_size)

        bare(loaded, subset[:args.batch_size], 2, args.batch_size)  # warm-up
        times = {"bare": [], "record": [], "authors": []}
        for _ in range(args.repeats):  # interleaved, so that drifting machine load hits all three alike
            times["bare"].append(timed(bare, loaded, subset, args.new_tokens, args.batch_size))
            times["record"].append(timed(record, subset))
            times["authors"].append(timed(authors, loaded, subset, args.new_tokens, args.batch_size))
        best = {name: min(values) for name, values in times.items()}
        if loaded.device.type == "cuda":
            peaks = [peak_cuda_mib(record, texts[:n]) for n in (args.prompts, 2 * args.prompts)]
        else:
            peaks = [peak_rss_mib(spec, texts[:n], args.new_tokens, args.batch_size)
                     for n in (args.prompts, 2 * args.prompts)]
        print(f"{label:<8}{best['bare']:>9.2f}{best['record']:>10.2f}{best['authors']:>11.2f}"
              f"{best['record'] / best['bare']:>13.3f}{best['authors'] / best['record']:>16.2f}"
              f"{peaks[0]:>12.1f}{peaks[1]:>13.1f}")
        del loaded


if __name__ == "__main__":
    main()
