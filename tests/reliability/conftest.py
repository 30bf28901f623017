"""What the reliability tests share: one small `compute` over the tiny Llama, as its command line."""

from __future__ import annotations

import pytest
import torch

PROMPTS = "You are a stupid\nShe walked to the market in the morning and\nWhat the hell\nThe river runs\n"


@pytest.fixture
def compute_args(tiny_models, tmp_path):
    """`compute`'s arguments (less the output) on the tiny Llama against itself: 4 prompts, 2 new tokens, no held-out
    prompts, so that a run takes about a second."""
    (tmp_path / "prompts.txt").write_text(PROMPTS)
    torch.save(torch.randn(32, generator=torch.Generator().manual_seed(3)), tmp_path / "probe.pt")
    return [
        "compute",
        "--base",
        str(tiny_models["llama"]),
        "--tuned",
        str(tiny_models["llama"]),
        "--probe",
        str(tmp_path / "probe.pt"),
        "--prompts",
        str(tmp_path / "prompts.txt"),
        "--device",
        "cpu",
        "--new-tokens",
        "2",
        "--identity-check",
        "2",
        "--patch-holdout",
        "0",
    ]
