"""Prove the installed wheel works on its own: run with the python of a fresh venv that installed it without -e.

Every module imports from the installed copy (not from a checkout), every command answers --help, a tiny Llama
pair goes through `compute`, and the explorer opens the result headless and moves through its screens.
"""

from __future__ import annotations

import asyncio
import importlib
import pkgutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

PROMPTS = "You are such a\nThe weather today is\nShut up, you\nMy favourite food is\n"


def check_modules() -> int:
    import neuron_explorer

    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    root = Path(neuron_explorer.__file__).resolve().parent
    if site not in root.parents:
        sys.exit(f"neuron_explorer was imported from {root}, not from the installed wheel in {site}")
    names = [info.name for info in pkgutil.walk_packages([str(root)], prefix="neuron_explorer.")]
    for name in names:
        importlib.import_module(name)
    sources = {path.relative_to(root).with_suffix("").as_posix().replace("/", ".")
               for path in root.rglob("*.py") if path.name != "__init__.py"}
    missing = {name for name in sources if f"neuron_explorer.{name}" not in names}
    if missing:
        sys.exit(f"modules in the wheel that discovery did not import: {sorted(missing)}")
    if not list(root.rglob("*.tcss")) or not list(root.rglob("data/*.json")):
        sys.exit("the wheel lacks its data files (.tcss styles, prompt templates)")
    return len(names)


def check_helps(executable: Path) -> int:
    from neuron_explorer.cli import COMMANDS

    for command in ([], *([name] for name in COMMANDS)):
        subprocess.run([str(executable), *command, "--help"], check=True, stdout=subprocess.DEVNULL)
    version = subprocess.run([str(executable), "--version"], check=True, capture_output=True, text=True).stdout
    if not all(f"\n{library} " in version for library in ("torch", "transformers", "trl")):
        sys.exit(f"--version does not name the engine's libraries: {version!r}")
    return len(COMMANDS) + 1


def tiny_pair(folder: Path) -> tuple[Path, Path]:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token=None))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator([PROMPTS * 10], trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>",
                                        pad_token="<|endoftext|>", bos_token="<|endoftext|>")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, bos_token_id=0, eos_token_id=0,
                         pad_token_id=0)
    paths = []
    for seed, name in ((0, "base"), (1, "tuned")):
        torch.manual_seed(seed)
        LlamaForCausalLM(config).save_pretrained(folder / name)
        tokenizer.save_pretrained(folder / name)
        paths.append(folder / name)
    torch.save(torch.randn(32), folder / "probe.pt")
    (folder / "prompts.txt").write_text(PROMPTS)
    return paths[0], paths[1]


def check_compute_and_explorer(executable: Path, folder: Path) -> Path:
    """A tiny `compute`, then the explorer on its file: through the entry point (a bad file exits 2 before the
    terminal is taken; a good one is opened), and headless through its screens."""
    base, tuned = tiny_pair(folder)
    output = folder / "tiny.h5"
    subprocess.run([str(executable), "compute", "--base", str(base), "--tuned", str(tuned),
                    "--probe", str(folder / "probe.pt"), "--prompts", str(folder / "prompts.txt"),
                    "--new-tokens", "3", "--device", "cpu", "-o", str(output)], check=True)

    refused = subprocess.run([str(executable), str(folder / "missing.h5")], capture_output=True, text=True)
    if refused.returncode != 2 or refused.stderr.count("\n") != 1:
        sys.exit(f"a missing file should be one error line and exit 2, got {refused.returncode}: {refused.stderr!r}")

    from neuron_explorer.explorer.app import ExplorerApp
    from neuron_explorer.explorer.state import Store

    async def visit() -> None:
        app = ExplorerApp(Store.open(output))
        async with app.run_test(size=(120, 40)) as pilot:
            for key in ("2", "3", "4", "1"):
                await pilot.press(key)
                await pilot.pause()
            await pilot.press("q")

    asyncio.run(visit())
    return output


def main() -> None:
    executable = Path(sys.executable).with_name("neuron-explorer")
    modules = check_modules()
    helps = check_helps(executable)
    with tempfile.TemporaryDirectory() as folder:
        check_compute_and_explorer(executable, Path(folder))
    print(f"wheel check: {modules} modules imported from the installed wheel, {helps} --help pages, "
          f"a tiny compute opened in the explorer headless")


if __name__ == "__main__":
    main()
