"""Planning a run before loading anything heavy: model sizes from their configs (the parameters built on the `meta`
device, so an 8B or 70B model costs nothing), the memory each device will need and whether that fits. The time
estimates come from warm-ups where the work lives: `neurons.compute.warm_up` and `patching.runs.warm_up`.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from neuron_explorer.engine.model.architectures import architecture_for
from neuron_explorer.engine.model.loading import check_same_shapes, resolve_device, resolve_dtype
from neuron_explorer.errors import UserError
from neuron_explorer.spec.settings import EvaluationSettings, RecordingSettings

GIB = 1024**3
LOGIT_LENS_CHUNK = 1024  # value vectors per logit-lens matmul (weights.value_tokens)
PROCESS_BYTES = 512 * 1024**2  # a compute process's resident set before any weight (bench/scale_bench.py, tiny)


@dataclass(frozen=True)
class ModelSize:
    """What a model's config says about its size."""

    spec: str
    model_type: str
    n_params: int
    n_layers: int
    d_mlp: int
    d_model: int
    vocab: int
    kv_width: int  # key/value heads × head size: one token's keys (or values) in one layer

    def weight_bytes(self, dtype: torch.dtype) -> int:
        return self.n_params * torch.empty((), dtype=dtype).element_size()

    def kv_bytes(self, batch: int, tokens: int, dtype: torch.dtype) -> int:
        """The KV cache of `batch` sequences of `tokens` tokens: keys and values of every layer."""
        return 2 * self.n_layers * batch * tokens * self.kv_width * torch.empty((), dtype=dtype).element_size()


def model_size(spec: str) -> ModelSize:
    """The size of a model spec from its config alone (a local folder's or the hub's config.json; no weights read)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from neuron_explorer.engine.model.loading import _locate

    base_spec = spec.partition("+")[0]
    folder, name, revision = _locate(base_spec)
    try:
        config = AutoConfig.from_pretrained(str(folder or name), revision=revision, trust_remote_code=False)
    except (OSError, ValueError) as error:
        raise UserError(
            f"cannot read the config of '{base_spec}': not a local model folder, and the hub is "
            f"unreachable or has no such model ({type(error).__name__})"
        ) from error
    arch = architecture_for(config.model_type)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    model.tie_weights()  # as loading does: a tied unembedding is the embedding, counted once
    heads = getattr(config, "num_attention_heads", None) or config.n_head
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    d_model = arch.value_vectors(model, 0).shape[1]
    head_dim = getattr(config, "head_dim", None) or d_model // heads
    return ModelSize(
        spec=spec,
        model_type=config.model_type,
        n_params=sum(p.numel() for p in model.parameters()),
        n_layers=arch.n_layers(model),
        d_mlp=arch.d_mlp(model),
        d_model=d_model,
        vocab=arch.unembedding(model).shape[0],
        kv_width=kv_heads * head_dim,
    )


@dataclass
class MemoryLine:
    what: str
    bytes: int
    where: str  # "device" or "disk"


@dataclass
class Plan:
    """The sizes, the memory lines, what is available, and the warnings; `estimate` once a warm-up ran."""

    models: list[ModelSize]
    device: str
    dtype: torch.dtype
    lines: list[MemoryLine]
    available: dict[str, int | None]  # "device" / "disk" -> bytes available, None where it cannot be told
    warnings: list[str]
    estimate: dict[str, float] | None = None
    counts: dict[str, int] = field(default_factory=dict)  # what the estimate extrapolates to

    def need(self, where: str) -> int:
        return sum(line.bytes for line in self.lines if line.where == where)

    def format(self) -> str:
        rows = [
            f"{m.spec}: {m.model_type}, {m.n_params / 1e9:.3g} B parameters, {m.n_layers} layers × "
            f"{m.d_mlp:,} neurons, d_model {m.d_model:,}, vocabulary {m.vocab:,}"
            for m in self.models
        ]
        rows.append(f"on {self.device} in {str(self.dtype).removeprefix('torch.')}:")
        for line in self.lines:
            rows.append(f"  {line.what:<58} {_size(line.bytes):>10}  ({line.where})")
        for where in ("device", "disk"):
            if self.need(where):
                available = self.available.get(where)
                shown = "unknown" if available is None else _size(available)
                rows.append(f"  {'total on the ' + where:<58} {_size(self.need(where)):>10}  of {shown} available")
        if self.estimate:
            rows.append(self.estimate_line())
        rows += [f"WARNING: {warning}" for warning in self.warnings]
        return "\n".join(rows)

    def estimate_line(self) -> str:
        if self.estimate is None:
            raise ValueError("no estimate yet: a warm-up batch makes it")
        parts = ", ".join(f"{name} {_duration(seconds)}" for name, seconds in self.estimate.items() if name != "total")
        return f"estimated time: {_duration(self.estimate['total'])} ({parts}; measured on a warm-up batch)"


def _size(count: int) -> str:
    for unit, scale in (("GiB", GIB), ("MiB", 1024**2), ("KiB", 1024)):
        if count >= scale:
            return f"{count / scale:.2f} {unit}"
    return f"{count} B"


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


def available_memory(device: str, max_memory: dict | None = None) -> int | None:
    """Free bytes on `device` (a GPU's free memory, or the system's available memory for the CPU), capped by the
    --max-memory given for it; None when it cannot be told."""
    if device.startswith("cuda"):
        index = torch.device(device).index or 0
        free: int | None = torch.cuda.mem_get_info(index)[0]
        cap = (max_memory or {}).get(index)
    else:
        free = _system_available()
        cap = (max_memory or {}).get("cpu")
    if cap is not None:
        from accelerate.utils import convert_file_size_to_int

        capped = convert_file_size_to_int(cap)
        free = capped if free is None else min(free, capped)
    return free


def _system_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def plan_compute(
    base_spec: str,
    tuned_spec: str,
    recording: RecordingSettings,
    n_prompts: int,
    *,
    device: str,
    dtype: str,
    device_map: str | None,
    max_memory: str | None,
    output: Path,
) -> Plan:
    """The memory `compute` needs to record `n_prompts` prompts by `recording`: both models' weights, the KV cache
    and the recorder's buffers of one batch, the logit lens's chunk, and on disk (the folder of `output`) the
    per-prompt activation store (float16, before compression)."""
    from neuron_explorer.engine.model.loading import parse_max_memory

    base, tuned = model_size(base_spec), model_size(tuned_spec)
    check_same_shapes({"layers": base.n_layers, "d_mlp": base.d_mlp}, {"layers": tuned.n_layers, "d_mlp": tuned.d_mlp})
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    batch, tokens = recording.batch_size, recording.max_prompt_tokens + recording.new_tokens + 1
    neurons = base.n_layers * base.d_mlp
    lines = [
        MemoryLine(f"weights, base ({base.n_params:,} parameters)", base.weight_bytes(torch_dtype), "device"),
        MemoryLine(f"weights, tuned ({tuned.n_params:,} parameters)", tuned.weight_bytes(torch_dtype), "device"),
        MemoryLine(
            f"KV cache, batch of {batch} × {tokens} tokens", base.kv_bytes(batch, tokens, torch_dtype), "device"
        ),
        MemoryLine(
            "recorder: a batch's sums and the float64 totals", batch * neurons * 4 * 2 + neurons * 8 * 2, "device"
        ),
        MemoryLine(
            f"logit lens: {LOGIT_LENS_CHUNK} value vectors × the vocabulary",
            LOGIT_LENS_CHUNK * base.vocab * 4,
            "device",
        ),
        *(
            [MemoryLine("the process itself: Python, torch, transformers (measured on a CPU)", PROCESS_BYTES, "device")]
            if device == "cpu"
            else []
        ),
        MemoryLine(
            f"per-prompt activations, {n_prompts:,} prompts × {neurons:,} neurons × 2 models",
            2 * n_prompts * neurons * 2,
            "disk",
        ),
    ]
    available = {"device": available_memory(device, parse_max_memory(max_memory))}
    output = Path(output).expanduser()
    if output.parent.exists():
        available["disk"] = shutil.disk_usage(output.parent).free
    plan = Plan(models=[base, tuned], device=device, dtype=torch_dtype, lines=lines, available=available, warnings=[])
    for where, advice in (
        ("device", "use --device-map auto (several GPUs, or offloading), a smaller --batch-size, or --dtype bfloat16"),
        ("disk", "write the cache to a larger disk (-o) or record fewer prompts (--max-prompts)"),
    ):
        free = available.get(where)
        if free is not None and plan.need(where) > free:
            if where == "device" and device_map:
                advice = "the device map will offload what does not fit (slower): add GPUs or raise --max-memory"
            plan.warnings.append(
                f"{_size(plan.need(where))} needed on the {where} but {_size(free)} available: {advice}"
            )
    return plan


def plan_patch(
    base_spec: str,
    tuned_spec: str,
    evaluation: EvaluationSettings,
    n_prompts: int,
    n_runs: int,
    *,
    device: str,
    dtype: str,
    lockstep: bool,
    baseline_stored: bool,
) -> Plan:
    """The memory patch runs need to evaluate by `evaluation`: the base model and, while base and DPO are
    measured or for a mode that runs it beside the base model (`PatchMode.runs_tuned`), the tuned model; the KV cache
    of a generation batch, a perplexity batch's logits (every position × the vocabulary) and the intervention's
    dense vectors."""
    base, tuned = model_size(base_spec), model_size(tuned_spec)
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    batch, tokens = evaluation.batch_size, evaluation.max_prompt_tokens + evaluation.new_tokens
    windows = evaluation.ppl_batch_size
    lines = [MemoryLine(f"weights, base ({base.n_params:,} parameters)", base.weight_bytes(torch_dtype), "device")]
    if lockstep or not baseline_stored:
        why = "runs beside the base model" if lockstep else "to measure the DPO baseline"
        lines.append(MemoryLine(f"weights, tuned ({why})", tuned.weight_bytes(torch_dtype), "device"))
    lines += [
        MemoryLine(
            f"KV cache, batch of {batch} × {tokens} tokens",
            base.kv_bytes(batch, tokens, torch_dtype) * (2 if lockstep else 1),
            "device",
        ),
        MemoryLine(
            f"perplexity: logits of {windows} windows × {evaluation.ppl_window} tokens × the vocabulary",
            windows * evaluation.ppl_window * base.vocab * 4,
            "device",
        ),
        MemoryLine(
            "the intervention's masks and values (every neuron at most)", base.n_layers * base.d_mlp * 5, "device"
        ),
    ]
    plan = Plan(
        models=[base, tuned],
        device=device,
        dtype=torch_dtype,
        lines=lines,
        available={"device": available_memory(device)},
        warnings=[],
    )
    free = plan.available["device"]
    if free is not None and plan.need("device") > free:
        plan.warnings.append(
            f"{_size(plan.need('device'))} needed on the device but {_size(free)} available: use a "
            f"smaller --batch-size or --ppl-window, or --dtype bfloat16"
        )
    plan.counts = {"prompts": n_prompts, "evaluations": n_runs + (0 if baseline_stored else 2)}
    return plan
