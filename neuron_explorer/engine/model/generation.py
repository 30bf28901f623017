"""Prompt encoding and the KV-cache generation loop shared by recording, evaluation and pair making.

The loop is our own (not `model.generate`) so that hooks know which forward call is the prefill and which are
single-token steps, and so every continuation has exactly `new_tokens` tokens: end-of-sequence tokens are
suppressed, as in the papers' fixed-length protocol.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from neuron_explorer.engine.model.loading import LoadedModel
from neuron_explorer.spec.settings import MAX_PROMPT_TOKENS, NEW_TOKENS


def encode_prompts(
    tokenizer, texts: list[str], max_prompt_tokens: int = MAX_PROMPT_TOKENS, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and attention mask, each prompt truncated to its first `max_prompt_tokens` tokens."""
    tokenizer.padding_side = "left"
    tokenizer.truncation_side = "right"
    batch = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_prompt_tokens)
    return batch["input_ids"].to(device), batch["attention_mask"].to(device)


def batches(items: list, size: int) -> Iterator[tuple[int, list]]:
    for start in range(0, len(items), size):
        yield start, items[start : start + size]


def special_token_ids(tokenizer) -> list[int]:
    """End-of-sequence and padding ids: suppressed so every continuation has exactly the asked-for length."""
    ids = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    return sorted(i for i in ids if i is not None)


@torch.inference_mode()
def generate_tokens(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    new_tokens: int = NEW_TOKENS,
    *,
    suppress_ids: list[int] | None = None,
    sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    generator: torch.Generator | None = None,
    before_forward: Callable[[int], None] | None = None,
    feed_last: bool = False,
) -> torch.Tensor:
    """(B, new_tokens) continuation ids, greedy unless `sample`.

    `before_forward(step)` runs before each forward call: step 0 is the prefill over the whole prompt, step k the
    single-token call that consumes the k-th generated token. There are `new_tokens` calls: the last generated
    token is never fed back, exactly like `new_tokens` uncached full passes that each read the last position.
    `feed_last` adds one more single-token call (step `new_tokens`) that consumes the last generated token, so that
    hooks see every generated token's own position; its logits are not used.
    """
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    generated = []
    cache = None
    step_ids, step_positions = input_ids, position_ids
    for step in range(new_tokens + (1 if feed_last and new_tokens else 0)):
        if before_forward is not None:
            before_forward(step)
        out = model(
            input_ids=step_ids,
            attention_mask=attention_mask,
            position_ids=step_positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        if step == new_tokens:
            break
        cache = out.cache
        logits = out.logits[:, -1, :].float()
        if suppress_ids:
            logits[:, suppress_ids] = float("-inf")
        if sample:
            logits = logits / max(temperature, 1e-5)
            if top_k:
                kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            next_ids = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator).squeeze(1)
        else:
            next_ids = logits.argmax(dim=-1)
        generated.append(next_ids)
        step_ids = next_ids[:, None]
        step_positions = step_positions[:, -1:] + 1
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(attention_mask.shape[0], 1)], dim=1)
    return torch.stack(generated, dim=1) if generated else input_ids.new_zeros(input_ids.shape[0], 0)


def generate_continuations(
    loaded: LoadedModel,
    texts: list[str],
    *,
    new_tokens: int = NEW_TOKENS,
    max_prompt_tokens: int = MAX_PROMPT_TOKENS,
    batch_size: int = 16,
    **sampling,
) -> list[str]:
    """Decoded continuations (the prompt removed), batch by batch."""
    out: list[str] = []
    for _, chunk in batches(texts, batch_size):
        ids, mask = encode_prompts(loaded.tokenizer, chunk, max_prompt_tokens, loaded.device)
        tokens = generate_tokens(
            loaded.model, ids, mask, new_tokens, suppress_ids=special_token_ids(loaded.tokenizer), **sampling
        )
        out.extend(loaded.tokenizer.batch_decode(tokens, skip_special_tokens=True))
    return out
