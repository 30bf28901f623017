"""Where the pair differs on any text (METHOD §8; the activation-difference lens of arXiv 2510.13900).

Both models read the same token ids. Per layer, the mean over every position of the block's output (the residual
stream) of the tuned model minus that of the base model: projected on the probe (does tuning push every text away
from toxicity, or only the toxic ones?) and decoded through the base model's final norm and unembedding (the tokens
the difference promotes and suppresses). And per position, KL(base ‖ tuned) of the next-token distributions: how
much the pair's predictions differ at all. Run on the perplexity corpus (text unrelated to toxicity) and on the
statistics prompts followed by the base model's continuation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from neuron_explorer.engine.measure.corpora import load_corpus, perplexity_windows
from neuron_explorer.engine.model.generation import encode_prompts
from neuron_explorer.engine.model.hooks import forward_hooks
from neuron_explorer.engine.model.loading import LoadedModel, weights_loaded
from neuron_explorer.engine.model.weights import LENS_FIELDS, lens_top_k
from neuron_explorer.spec.settings import CORPUS

LENS_TOKENS = 10
CORPUS_WINDOW = 128  # tokens per corpus text
CORPUS_WINDOWS = 8
PROMPT_TEXTS = 32  # statistics prompts read (evenly spread)
BATCH = 4  # sequences of one length per forward pass (no padding); 4 × 128 positions × the vocabulary of log-probs


@dataclass
class TextDifference:
    """One source's per-layer mean residual difference (tuned − base) and the pair's mean next-token KL."""

    source: str
    n_texts: int
    n_tokens: int
    mean_difference: np.ndarray  # (n_layers, d_model), float64
    residual_norm: np.ndarray  # (n_layers,) mean ‖residual‖ of the base model, for scale
    kl_mean: float  # mean over positions of KL(base ‖ tuned), nats
    kl_max: float

    def arrays(self, base: LoadedModel, unit_probe: np.ndarray, k: int = LENS_TOKENS) -> dict[str, np.ndarray]:
        """What the cache keeps (schema.DIFFERENCE_ARRAYS): the difference, its probe projection and norm, and its
        top and bottom tokens through the base model's final norm and unembedding."""
        arch, model = base.arch, base.model
        with weights_loaded(arch.final_norm(model), model.get_output_embeddings()):
            tokens = lens_top_k(base, torch.as_tensor(self.mean_difference, dtype=torch.float32), k)
        return {
            "mean_difference": self.mean_difference.astype(np.float32),
            "probe_projection": self.mean_difference @ np.asarray(unit_probe, dtype=np.float64),
            "difference_norm": np.linalg.norm(self.mean_difference, axis=1),
            "residual_norm": self.residual_norm,
            **{name: tokens[name] for name in LENS_FIELDS},
        }

    def attrs(self) -> dict:
        return {
            "source": self.source,
            "n_texts": self.n_texts,
            "n_tokens": self.n_tokens,
            "kl_mean": self.kl_mean,
            "kl_max": self.kl_max,
        }


def corpus_sequences(
    base: LoadedModel, corpus: str = CORPUS, window: int = CORPUS_WINDOW, n_windows: int = CORPUS_WINDOWS
) -> list[list[int]]:
    return perplexity_windows(base.tokenizer, load_corpus(corpus), window=window, max_windows=n_windows)


def prompt_sequences(
    base: LoadedModel, prompts: list[str], continuations: list[str], max_prompt_tokens: int, n_texts: int = PROMPT_TEXTS
) -> list[list[int]]:
    """Each prompt truncated as recorded, then the base model's continuation, for up to `n_texts` prompts."""
    chosen: np.ndarray | list[int] = (
        np.unique(np.linspace(0, len(prompts) - 1, min(n_texts, len(prompts))).round().astype(int)) if prompts else []
    )
    sequences = []
    for i in chosen:
        ids, _ = encode_prompts(base.tokenizer, [prompts[i]], max_prompt_tokens)
        tail = base.tokenizer(continuations[i], add_special_tokens=False)["input_ids"] if continuations[i] else []
        sequences.append(ids[0].tolist() + list(tail))
    return sequences


@torch.inference_mode()
def measure_difference(pre: LoadedModel, dpo: LoadedModel, sequences: list[list[int]], source: str) -> TextDifference:
    """Run both models over `sequences` (those of one length together, unpadded) and average the residual
    difference and the KL over every position."""
    n_layers = pre.arch.n_layers(pre.model)
    d_model = pre.d_model
    sums = {"pre": np.zeros((n_layers, d_model)), "dpo": np.zeros((n_layers, d_model))}
    norm_sum = np.zeros(n_layers)
    kl_sum, kl_max, n_tokens = 0.0, 0.0, 0

    def run(loaded: LoadedModel, name: str, rows: list[list[int]]) -> torch.Tensor:
        def keep(layer: int):
            def hook(module, inputs, output):
                hidden = (output[0] if isinstance(output, tuple) else output).double()
                sums[name][layer] += hidden.sum(dim=(0, 1)).cpu().numpy()
                if name == "pre":
                    norm_sum[layer] += float(hidden.norm(dim=-1).sum())

            return hook

        hooks = [(block, keep(layer)) for layer, block in enumerate(loaded.arch.layers(loaded.model))]
        with forward_hooks(hooks):
            logits = loaded.model(input_ids=torch.tensor(rows, device=loaded.device), use_cache=False).logits
        return torch.log_softmax(logits.float(), dim=-1).cpu()

    by_length: dict[int, list[list[int]]] = {}
    for ids in sequences:
        if ids:
            by_length.setdefault(len(ids), []).append(ids)
    for length, group in by_length.items():
        for start in range(0, len(group), BATCH):
            rows = group[start : start + BATCH]
            log_pre, log_dpo = run(pre, "pre", rows), run(dpo, "dpo", rows)
            kl = (log_pre.exp() * (log_pre - log_dpo)).sum(dim=-1).double()
            del log_pre, log_dpo
            kl_sum += float(kl.sum())
            kl_max = max(kl_max, float(kl.max()))
            n_tokens += length * len(rows)
    scale = max(n_tokens, 1)
    return TextDifference(
        source=source,
        n_texts=sum(len(group) for group in by_length.values()),
        n_tokens=n_tokens,
        mean_difference=(sums["dpo"] - sums["pre"]) / scale,
        residual_norm=norm_sum / scale,
        kl_mean=kl_sum / scale,
        kl_max=kl_max,
    )
