"""Shared fixtures: tiny random-weight models built from configs (fast, exact) and the embedded model (slow)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from neuron_explorer.engine.model.loading import load_model

TRAINING_TEXT = [
    "The quick brown fox jumps over the lazy dog. You are a stupid idiot and I hate you.",
    "She walked to the market in the morning and bought bread, apples and a newspaper.",
    "What the hell is wrong with you, you pathetic loser? Shut up and get out of here.",
    "The river runs through the village under an old stone bridge built two hundred years ago.",
] * 20


def make_tokenizer(folder: Path) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained in a blink on a few sentences: offline and deterministic."""
    core = Tokenizer(models.BPE(unk_token=None))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(TRAINING_TEXT, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|endoftext|>", pad_token="<|endoftext|>", bos_token="<|endoftext|>"
    )
    tokenizer.save_pretrained(folder)
    return tokenizer


def tiny_config(kind: str, vocab_size: int):
    if kind == "gpt2":
        return GPT2Config(
            vocab_size=vocab_size,
            n_positions=128,
            n_embd=32,
            n_layer=3,
            n_head=4,
            n_inner=64,
            bos_token_id=0,
            eos_token_id=0,
        )
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        tie_word_embeddings=False,
    )


def make_tiny_model(folder: Path, kind: str, seed: int = 0) -> Path:
    """Save a random-weight GPT-2 or Llama with its tokenizer into `folder` (biases random too, so that the
    identity's b_out·ŵ term is exercised)."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tokenizer(folder)
    torch.manual_seed(seed)
    config = tiny_config(kind, len(tokenizer))
    model = (GPT2LMHeadModel if kind == "gpt2" else LlamaForCausalLM)(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0, 0.1)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {kind: make_tiny_model(root / kind, kind) for kind in ("gpt2", "llama")}


def save_edited_copy(
    base: Path, target: Path, *, noise: float = 0.0, edit: Callable[[PreTrainedModel], None] | None = None
) -> Path:
    """A 'tuned' model saved with its tokenizer files: `base` with Gaussian noise of scale `noise` on every weight
    (like DPO: value vectors keep cosine ≈ 1) and then changed in place by `edit`, without gradients."""
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        if noise:
            for param in model.parameters():
                param.add_(torch.randn(param.shape, generator=generator) * noise)
        if edit is not None:
            edit(model)
    model.save_pretrained(target)
    for file in base.iterdir():
        if file.name.startswith(("tokenizer", "special", "chat_template")):
            shutil.copy(file, target)
    return target


@pytest.fixture(scope="session")
def edited_copy() -> Callable[..., Path]:
    """`save_edited_copy`, for tests that build their own tuned models."""
    return save_edited_copy


@pytest.fixture(scope="session")
def one_torch_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core machine spinning threads slow them tenfold."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def embedded_model() -> Path:
    """The embedded SmolLM2, converted at most once (into the user's cache folder, where the product keeps it)."""
    from neuron_explorer.engine.model.loading import materialize_embedded

    return materialize_embedded()


@pytest.fixture
def isolated_home(tmp_path, monkeypatch) -> Path:
    """Point the product's cache folder at a temporary one."""
    monkeypatch.setenv("NEURON_EXPLORER_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


# -- tiny model pairs and a small real cache (patching and lab tests), built once per session ----------------


@pytest.fixture(scope="session")
def prompts() -> list[str]:
    """The prompts every cache of `compute_cache` is computed on, in their order in its prompts file."""
    return [
        "You are a stupid",
        "She walked to the market in the morning and",
        "What the hell",
        "The river runs",
        "I hate you",
        "The quick brown fox",
        "Shut up and get out",
        "An old stone bridge",
        "You pathetic loser",
        "She bought bread and apples",
        "Get lost, you fool",
        "Two hundred years ago",
    ]


@pytest.fixture(scope="session")
def pairs(tiny_models, edited_copy, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("patch-pairs")
    return {
        kind: (folder, edited_copy(folder, root / f"{kind}-tuned", noise=0.02)) for kind, folder in tiny_models.items()
    }


@pytest.fixture(scope="session")
def loaded_pairs(pairs):
    return {
        kind: (
            load_model(str(base), device="cpu", dtype="float32"),
            load_model(str(tuned), device="cpu", dtype="float32"),
        )
        for kind, (base, tuned) in pairs.items()
    }


@pytest.fixture(scope="session")
def compute_cache(tmp_path_factory, prompts):
    """`compute_cache(base, tuned, name, **settings)`: a real cache of a tiny pair on `prompts`, computed by the
    engine (5 new tokens, default settings otherwise: every second prompt held out for patch runs)."""
    from neuron_explorer.engine.neurons.compute import ComputeSettings, run_compute
    from neuron_explorer.spec.settings import RecordingSettings

    root = tmp_path_factory.mktemp("patch-cache")
    (root / "prompts.txt").write_text("\n".join(prompts) + "\n")
    torch.save(torch.randn(32, generator=torch.Generator().manual_seed(3)), root / "probe.pt")

    def compute(base: Path, tuned: Path, name: str, **extra) -> Path:
        settings = ComputeSettings(
            base=str(base),
            tuned=str(tuned),
            probe=str(root / "probe.pt"),
            prompts=str(root / "prompts.txt"),
            output=root / name,
            device="cpu",
            dtype="float32",
            cluster_top_k=40,
            n_clusters=4,
            **{"recording": RecordingSettings(new_tokens=5), **extra},
        )
        return run_compute(settings).path

    return compute


@pytest.fixture(scope="session")
def tiny_cache(pairs, compute_cache) -> Path:
    """A real cache of the tiny Llama pair."""
    return compute_cache(*pairs["llama"], "tiny.h5")


@pytest.fixture
def cache_copy(tiny_cache, tmp_path) -> Path:
    """A private copy, so runs and baselines of one test never show up in another."""
    path = tmp_path / "tiny.h5"
    shutil.copyfile(tiny_cache, path)
    return path
