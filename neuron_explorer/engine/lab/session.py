"""One prompt through the base, DPO and (with an intervention) patched base model, by the cache's own protocol.

`LabSession` loads the cache's model pair once and answers `RunRequest`s. Each model runs the prompt through
`record_model` (the recorder that wrote the cache, with its positions, truncation and new tokens), so the prompt's
ā for both models is the same quantity as the cache's per-prompt activations, and `neuron_metrics` turns them into
P and Δ by the cache's definitions. While the model generates, `ProbeLens` reads at every position the projection on
the probe direction of each block's output (the residual stream) and of each MLP's write into it. The intervention
is built by the patch-mode registry exactly as a patch run builds it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import cast

import numpy as np
import torch

from neuron_explorer.cache import layout
from neuron_explorer.cache.reader import CacheReader
from neuron_explorer.engine.lab.protocol import PROMPT_NEURON_COLUMNS, ExamplesRequest, RunRequest, TokensRequest
from neuron_explorer.engine.model.generation import encode_prompts, generate_tokens, special_token_ids
from neuron_explorer.engine.model.hooks import forward_hooks
from neuron_explorer.engine.model.loading import WEIGHT_HASHES, LoadedModel, check_pair, execution_device, load_model
from neuron_explorer.engine.neurons.identity_check import read_positions
from neuron_explorer.engine.neurons.recording import record_model
from neuron_explorer.engine.neurons.statistics import neuron_metrics
from neuron_explorer.engine.patching import modes
from neuron_explorer.engine.patching.context import CacheContext
from neuron_explorer.engine.patching.runs import check_fits_cache, check_spec, model_specs, stale_weights
from neuron_explorer.errors import UserError
from neuron_explorer.events import Message, Reporter, Tracker, ignore
from neuron_explorer.spec.settings import SCORER, DeviceSettings, RecordingSettings


class RequestCancelled(Exception):
    """The user cancelled the request; raised from a hook at the next forward call."""


@dataclass(frozen=True)
class LabProtocol:
    """How the cache was recorded, and so how the lab runs a prompt (from the cache's provenance)."""

    positions: str = RecordingSettings.positions
    new_tokens: int = RecordingSettings.new_tokens
    max_prompt_tokens: int = RecordingSettings.max_prompt_tokens
    shared_continuation: bool = RecordingSettings.shared_continuation

    @classmethod
    def of(cls, reader: CacheReader) -> LabProtocol:
        """What the cache recorded; the recording defaults for what an older cache left out."""
        settings = reader.info.provenance.get("settings", {})
        return cls(
            positions=str(settings.get("positions", reader.attrs().get(layout.POSITIONS, cls.positions))),
            new_tokens=int(settings.get("new_tokens", cls.new_tokens)),
            max_prompt_tokens=int(settings.get("max_prompt_tokens", cls.max_prompt_tokens)),
            shared_continuation=bool(settings.get("shared_continuation", cls.shared_continuation)),
        )


@dataclass
class ModelRun:
    """One model on the prompt: its continuation, the prompt's per-neuron means and the probe lens."""

    continuation_ids: list[int]
    continuation: str
    tokens: list[str]
    act_mean: np.ndarray  # (n_layers, d_mlp) ā over the protocol's positions
    written_mean: np.ndarray | None  # (n_layers, d_mlp) mean of m·s_t (output-norm architectures)
    lens_residual: np.ndarray  # (n_layers, T) each block's output · ŵ
    lens_mlp: np.ndarray  # (n_layers, T) each MLP's write · ŵ
    toxicity: float = float("nan")

    def to_dict(self) -> dict:
        return {
            "continuation": self.continuation,
            "tokens": self.tokens,
            "toxicity": self.toxicity,
            "lens": {"residual": _rows(self.lens_residual), "mlp": _rows(self.lens_mlp)},
        }


@dataclass
class LabResult:
    """The answer to one request (`protocol.RESULT_FIELDS` describes `to_dict`)."""

    request: RunRequest
    prompt_tokens: list[str]
    truncated: bool
    protocol: LabProtocol
    models: dict
    scorer: str
    runs: dict[str, ModelRun]
    metrics: dict[str, np.ndarray]  # neuron_metrics of this prompt (float32 (n_layers, d_mlp) columns and group)
    intervention: dict | None = None
    seconds: dict = field(default_factory=dict)

    def top_neurons(self, k: int) -> np.ndarray:
        """Flat indices of the union of the top k by Δ and the top k by |δ|, by Δ descending."""
        contribution = self.metrics["contribution"].ravel()
        shift = np.abs(self.metrics["act_shift"].ravel())
        k = min(k, contribution.size)
        chosen = np.union1d(np.argpartition(-contribution, k - 1)[:k], np.argpartition(-shift, k - 1)[:k])
        return chosen[np.argsort(-contribution[chosen], kind="stable")]

    def to_dict(self, full: bool | None = None) -> dict:
        full = self.request.full if full is None else full
        d_mlp = self.metrics["contribution"].shape[1]
        chosen = self.top_neurons(self.request.top)
        neurons = {"layer": (chosen // d_mlp).tolist(), "neuron": (chosen % d_mlp).tolist()}
        for name in PROMPT_NEURON_COLUMNS:
            neurons[name] = self.metrics[name].ravel()[chosen].astype(float).tolist()
        if "patched" in self.runs:
            neurons["act_patched"] = self.runs["patched"].act_mean.ravel()[chosen].astype(float).tolist()
        contribution = self.metrics["contribution"].astype(np.float64)
        out = {
            "id": self.request.id,
            "prompt": self.request.prompt,
            "prompt_tokens": self.prompt_tokens,
            "truncated": self.truncated,
            "protocol": self.protocol.__dict__.copy(),
            "models": self.models,
            "scorer": self.scorer,
            "intervention": self.intervention,
            "runs": {name: run.to_dict() for name, run in self.runs.items()},
            "neurons": neurons,
            "layer_contribution": contribution.sum(axis=1).tolist(),
            "totals": {
                "sum_positive": float(contribution[contribution > 0].sum()),
                "sum_negative": float(contribution[contribution < 0].sum()),
                "net": float(contribution.sum()),
            },
            "seconds": {name: round(value, 4) for name, value in self.seconds.items()},
        }
        if full:
            out["full"] = {"act_pre": _rows(self.runs["base"].act_mean), "act_dpo": _rows(self.runs["dpo"].act_mean)}
        return out


@dataclass
class TokensResult:
    """The answer to a tokens request (`protocol.TOKENS_FIELDS` describes `to_dict`)."""

    request: TokensRequest
    found: dict[str, dict[str, np.ndarray]]  # base / dpo -> weights.LENS_FIELDS, (len(neurons), k) each
    vocab: np.ndarray  # the cache's token strings, which the explorer shows for the stored neurons too

    def to_dict(self) -> dict:
        out = {"id": self.request.id, "neurons": [list(pair) for pair in self.request.neurons]}
        for model, fields in self.found.items():
            out[model] = {
                name: (
                    [[str(self.vocab[i]) for i in row] for row in values]
                    if "tokens" in name
                    else np.asarray(values, dtype=np.float64).tolist()
                )
                for name, values in fields.items()
            }
        return out


@dataclass
class ExamplesResult:
    """The answer to an examples request (`protocol.EXAMPLES_FIELDS` describes `to_dict`)."""

    request: ExamplesRequest
    positions: str
    examples: list[dict]
    tokens: dict[str, dict[str, list]]  # base / dpo -> weights.LENS_FIELDS of the neuron, k each

    def to_dict(self) -> dict:
        return {
            "id": self.request.id,
            "layer": self.request.layer,
            "neuron": self.request.neuron,
            "positions": self.positions,
            "examples": self.examples,
            "tokens": self.tokens,
        }


def _rows(array: np.ndarray) -> list[list[float]]:
    return np.asarray(array, dtype=np.float64).tolist()


class ProbeLens:
    """Projections on a unit direction of each block's output and of each MLP's write, at every position of every
    forward call (the prefill's positions, then one per generated token), kept on the device until the end."""

    def __init__(self, loaded: LoadedModel, unit: np.ndarray):
        arch, model = loaded.arch, loaded.model
        self.blocks = list(arch.layers(model))
        self.writes = [
            arch.output_norm(model, layer) or arch.out_proj(model, layer) for layer in range(len(self.blocks))
        ]
        device = execution_device(self.blocks[-1])
        self.unit = torch.as_tensor(unit, dtype=torch.float32, device=device)
        self.residual: list[list[torch.Tensor]] = [[] for _ in self.blocks]
        self.mlp: list[list[torch.Tensor]] = [[] for _ in self.blocks]

    def hooks(self):
        pairs = [(block, self._keep(self.residual, layer)) for layer, block in enumerate(self.blocks)]
        pairs += [(module, self._keep(self.mlp, layer)) for layer, module in enumerate(self.writes)]
        return forward_hooks(pairs)

    def _keep(self, store: list[list[torch.Tensor]], layer: int) -> Callable:
        def hook(module, inputs, output):
            hidden = output[0] if isinstance(output, tuple) else output
            store[layer].append((hidden.float() * self.unit.to(hidden.device)).sum(-1))  # the same sum for every row

        return hook

    def clear(self) -> None:
        for store in (self.residual, self.mlp):
            for calls in store:
                calls.clear()

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(B, n_layers, T) each: the residual-stream and the MLP-write projections of every batch row."""

        def stack(store):
            return torch.stack([torch.cat(calls, dim=1).cpu() for calls in store], dim=1).double().numpy()

        return stack(self.residual), stack(self.mlp)


class LabSession(CacheContext):
    """The cache, its base and tuned models (loaded once) and what the patch modes need; answers requests."""

    def __init__(
        self,
        cache_path: str | Path,
        *,
        base: str | None = None,
        tuned: str | None = None,
        device: str = DeviceSettings.device,
        dtype: str = DeviceSettings.dtype,
        scorer: str = SCORER,
        report: Reporter = ignore,
    ):
        from neuron_explorer.engine.measure.scoring import get_scorer

        started = time.perf_counter()
        self.cache_path = Path(cache_path).expanduser()
        self.reader = CacheReader(self.cache_path)
        self.base_spec, self.tuned_spec = model_specs(self.reader, base, tuned)
        self.protocol = LabProtocol.of(self.reader)
        with ThreadPoolExecutor(1) as background:  # the scorer's imports (scikit-learn) overlap the model loading
            scorer_ready = background.submit(get_scorer, scorer)
            tracker = Tracker(report, "loading the base model", 2)
            self.loaded = load_model(self.base_spec, device=device, dtype=dtype)
            tracker.advance(1, "loading the tuned model")
            tuned_model = load_model(self.tuned_spec, device=device, dtype=dtype)
            tracker.advance(1, "models loaded")
            self.scorer = scorer_ready.result()
        check_pair(self.loaded, tuned_model)
        check_fits_cache(self.loaded, self.reader)
        for line in stale_weights(
            self.reader,
            {
                role: {k: v for k, v in loaded.description.items() if k in WEIGHT_HASHES}
                for role, loaded in (("base", self.loaded), ("tuned", tuned_model))
            },
        ):
            report(Message(line, "warning"))
        super().__init__(
            self.reader, self.loaded, self.tuned_spec, device=device, dtype=dtype, report=report, tuned=tuned_model
        )
        self.weights = {
            name: self.reader.neuron_array(name).astype(np.float64)
            for name in ("p_pre", "p_dpo", "cos_pre", "cos_dpo", "value_cos")
        }
        self._prompt_projection: dict | None = None
        self.load_seconds = time.perf_counter() - started

    def close(self) -> None:
        self.reader.close()

    def __enter__(self) -> LabSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the lab's own part of what the patch modes' builders read (modes.InterventionContext) --------------------
    def subtract_alpha(self) -> tuple[float, str]:
        """For `subtract` without --alpha: DPO's change of the last-layer projection, measured on this prompt (in
        sample: the lab has no other prompts, and says so)."""
        assert self._prompt_projection is not None, "the base and DPO runs come before the intervention is built"
        return (
            self._prompt_projection["base"] - self._prompt_projection["dpo"],
            "this prompt's own base and DPO runs (in sample)",
        )

    # -- requests ------------------------------------------------------------------------------------------------
    def answer(
        self, request: RunRequest, report: Reporter = ignore, cancelled: threading.Event | None = None
    ) -> LabResult:
        """Run the prompt through base, DPO and (with a mode) the patched base; `cancelled` stops it at the next
        forward call (RequestCancelled)."""
        started = time.perf_counter()
        spec = request.intervention
        values, selection = check_spec(spec, self.reader) if spec is not None else ({}, None)
        tokenizer = self.loaded.tokenizer
        ids, _ = encode_prompts(tokenizer, [request.prompt], self.protocol.max_prompt_tokens)
        full_length = len(tokenizer(request.prompt)["input_ids"])
        prompt_tokens = [tokenizer.decode([i]) for i in ids[0].tolist()]
        runs: dict[str, ModelRun] = {}
        seconds: dict[str, float] = {}
        # The patched run shares the base model's weights, so it runs beside the base run as a second batch row
        # (about 1.3× one row's time instead of 2×), unless a parameter is measured from this prompt's base and DPO
        # runs (subtract's α).
        batched = spec is not None and None not in values.values()
        tracker = Tracker(report, "base + patched" if batched else "base", 3 if spec and not batched else 2)
        built = None
        with self._stops_when(cancelled):
            clock = time.perf_counter()
            if spec is not None and batched:
                built = modes.get(spec.mode).build(self, selection, values, spec.positions)
                runs["base"], runs["patched"] = self._run(self.loaded, request.prompt, [None, built])
                seconds["base + patched"] = time.perf_counter() - clock
            else:
                (runs["base"],) = self._run(self.loaded, request.prompt, [None])
                seconds["base"] = time.perf_counter() - clock
            tracker.advance(1, "dpo")
            clock = time.perf_counter()
            teacher = runs["base"].continuation_ids if self.protocol.shared_continuation else None
            (runs["dpo"],) = self._run(self._tuned, request.prompt, [None], teacher=teacher)
            seconds["dpo"] = time.perf_counter() - clock
            if spec is not None and not batched:
                tracker.advance(1, "patched")
                clock = time.perf_counter()
                last = {
                    name: float(np.mean(runs[name].lens_residual[-1, len(prompt_tokens) :])) for name in ("base", "dpo")
                }
                self._prompt_projection = last
                built = modes.get(spec.mode).build(self, selection, values, spec.positions)
                (runs["patched"],) = self._run(self.loaded, request.prompt, [built])
                seconds["patched"] = time.perf_counter() - clock
            tracker.advance(1, "done")
        intervention = (
            None
            if built is None or spec is None
            else {
                **spec.to_dict(),
                "label": spec.name(),
                "params": {name: built.details.get(name, value) for name, value in values.items()},
                "neurons": built.n_neurons,
                **{key: built.details[key] for key in ("alpha_fitted_on",) if key in built.details},
            }
        )
        names = list(runs)
        scores = self.scorer.score([runs[name].continuation for name in names])
        for name, score in zip(names, scores):
            runs[name].toxicity = float(score)
        base, dpo = runs["base"], runs["dpo"]
        metrics = neuron_metrics(
            p_pre=self.weights["p_pre"],
            p_dpo=self.weights["p_dpo"],
            cos_pre=self.weights["cos_pre"],
            cos_dpo=self.weights["cos_dpo"],
            value_cos=self.weights["value_cos"],
            act_pre=base.act_mean,
            act_dpo=dpo.act_mean,
            written_pre=base.written_mean,
            written_dpo=dpo.written_mean,
        )
        seconds["total"] = time.perf_counter() - started
        return LabResult(
            request=request,
            prompt_tokens=prompt_tokens,
            truncated=full_length > len(prompt_tokens),
            protocol=self.protocol,
            models={"base": self.base_spec, "tuned": self.tuned_spec},
            scorer=self.scorer.name,
            runs=runs,
            metrics=metrics,
            intervention=intervention,
            seconds=seconds,
        )

    def value_tokens(self, request: TokensRequest) -> TokensResult:
        """The lens of the neurons asked for, on both models (what `compute` stores, for neurons its `lens_rule`
        left out)."""
        from neuron_explorer.engine.model.weights import neuron_tokens

        info = self.reader.info
        for layer, neuron in request.neurons:
            if layer >= info.n_layers or neuron >= info.d_mlp:
                raise UserError(f"no neuron {layer}:{neuron}: the cache has {info.n_layers} layers × {info.d_mlp}")
        found = {
            name: neuron_tokens(loaded, request.neurons)
            for name, loaded in (("base", self.loaded), ("dpo", self._tuned))
        }
        return TokensResult(request, found, self.reader.vocab())

    def neuron_examples(self, request: ExamplesRequest, cancelled: threading.Event | None = None) -> ExamplesResult:
        """One neuron's activation at every token of some statistics prompts and each model's continuation, as
        `compute` recorded them (its truncation, greedy continuation and positions): what the detail screen
        highlights. Each prompt's mean over the read positions comes with the recorder's and the cache's ā."""
        info, layer, neuron = self.reader.info, request.layer, request.neuron
        if layer >= info.n_layers or neuron >= info.d_mlp:
            raise UserError(f"no neuron {layer}:{neuron}: the cache has {info.n_layers} layers × {info.d_mlp}")
        texts = self.reader.prompt_texts()
        if max(request.prompts) >= len(texts):
            raise UserError(f"no prompt {max(request.prompts)}: the cache has {len(texts)} statistics prompts")
        chosen = [texts[index] for index in request.prompts]
        found: dict[str, list[dict]] = {}
        teacher = None
        with self._stops_when(cancelled):
            for name, model, stored in (("base", self.loaded, "pre"), ("dpo", self._tuned, "dpo")):
                path = layout.prompt_acts_path(stored)
                cached = self.reader.file[path][:, layer, neuron] if path in self.reader.file else None
                found[name], continuations = self._neuron_tokens(model, chosen, layer, neuron, teacher)
                for row, index in zip(found[name], request.prompts):
                    row["stored"] = None if cached is None else float(cached[index])
                if self.protocol.shared_continuation:
                    teacher = continuations  # the tuned model reads the base model's tokens, as compute did
        examples = [
            {"prompt": index, "text": text, "base": base, "dpo": dpo}
            for index, text, base, dpo in zip(request.prompts, chosen, found["base"], found["dpo"])
        ]
        lens = self.value_tokens(TokensRequest(request.id, ((layer, neuron),))).to_dict()
        tokens = {model: {name: values[0] for name, values in lens[model].items()} for model in ("base", "dpo")}
        return ExamplesResult(request, self.protocol.positions, examples, tokens)

    def _neuron_tokens(
        self, loaded: LoadedModel, texts: list[str], layer: int, neuron: int, teacher: torch.Tensor | None
    ) -> tuple[list[dict], torch.Tensor]:
        """Each prompt by the recorder (its continuation and ā), then prompt + continuation in one unpadded pass
        that reads the neuron at every position (as the identity check reads its positions)."""
        protocol, tokenizer = self.protocol, loaded.tokenizer
        recorded: list[float] = []

        def keep(start: int, act: np.ndarray, written: np.ndarray | None, counts: np.ndarray) -> None:
            recorded.extend(float(value) for value in act[:, layer, neuron])

        recording = record_model(
            loaded,
            texts,
            positions=protocol.positions,
            new_tokens=protocol.new_tokens,
            max_prompt_tokens=protocol.max_prompt_tokens,
            batch_size=len(texts),
            sink=keep,
            teacher_tokens=None if teacher is None else [teacher],
        )
        continuations = (
            recording.continuation_ids[0]
            if recording.continuation_ids
            else torch.zeros((len(texts), 0), dtype=torch.long)
        )
        captured: list[torch.Tensor] = []

        def read(module, inputs, output):
            captured.append(inputs[0][0, :, neuron].float().cpu())

        rows = []
        with forward_hooks([(loaded.arch.out_proj(loaded.model, layer), read)]), torch.inference_mode():
            for text, continuation, mean in zip(texts, continuations, recorded):
                ids, _ = encode_prompts(tokenizer, [text], protocol.max_prompt_tokens, loaded.device)
                full = torch.cat([ids, continuation.to(ids.device)[None]], dim=1)
                captured.clear()
                loaded.model(input_ids=full, use_cache=False, logits_to_keep=1)
                acts = captured[0].double().numpy()
                prompt_length = ids.shape[1]
                positions = read_positions(protocol.positions, prompt_length, len(continuation))
                read_mask = np.zeros(len(acts), dtype=bool)
                read_mask[list(positions)] = True
                rows.append(
                    {
                        "tokens": [cast(str, tokenizer.decode([i])) for i in full[0].tolist()],
                        "prompt_length": prompt_length,
                        "acts": acts.tolist(),
                        "read": read_mask.tolist(),
                        "mean": float(acts[read_mask].mean()) if read_mask.any() else float("nan"),
                        "recorded": mean,
                    }
                )
        return rows, continuations

    @contextmanager
    def _stops_when(self, cancelled: threading.Event | None) -> Iterator[None]:
        """A hook on both models that raises RequestCancelled at the next forward call once `cancelled` is set."""
        if cancelled is None:
            yield
            return

        def check(module, inputs):
            if cancelled.is_set():
                raise RequestCancelled()

        with forward_hooks([(self.loaded.model, check), (self._tuned.model, check)], pre=True):
            yield

    def _run(
        self, loaded: LoadedModel, prompt: str, interventions: list, *, teacher: list[int] | None = None
    ) -> list[ModelRun]:
        """The prompt through one model by the cache's protocol, one batch row per entry of `interventions` (None:
        the model as it is): each row's per-prompt means from the recorder, continuation and lens."""
        protocol, tokenizer = self.protocol, loaded.tokenizer
        n_rows = len(interventions)
        lens = ProbeLens(loaded, self.unit_probe)
        rows: list[tuple[np.ndarray, np.ndarray | None]] = []

        def keep(start: int, act: np.ndarray, written: np.ndarray | None, counts: np.ndarray) -> None:
            rows.extend((act[row], None if written is None else written[row]) for row in range(len(act)))

        with ExitStack() as hooks:
            for row, intervention in enumerate(interventions):
                if intervention is not None:
                    hooks.enter_context(replace(intervention, rows=slice(row, row + 1)).hooks())
            hooks.enter_context(lens.hooks())
            recording = record_model(
                loaded,
                [prompt] * n_rows,
                positions=protocol.positions,
                new_tokens=protocol.new_tokens,
                max_prompt_tokens=protocol.max_prompt_tokens,
                batch_size=n_rows,
                sink=keep,
                teacher_tokens=None if teacher is None else [torch.tensor([teacher] * n_rows)],
            )
            if recording.continuation_ids and teacher is None:
                continuations = recording.continuation_ids[0]
            else:
                # the protocol read no continuation of this model's own (prompt positions only, or the other
                # model's tokens): generate it, and let the lens show that generation
                lens.clear()
                ids, mask = encode_prompts(tokenizer, [prompt] * n_rows, protocol.max_prompt_tokens, loaded.device)
                continuations = generate_tokens(
                    loaded.model,
                    ids,
                    mask,
                    protocol.new_tokens,
                    suppress_ids=special_token_ids(tokenizer),
                    feed_last=True,
                )
        residual, mlp = lens.arrays()
        out = []
        for row, (act, written) in enumerate(rows):
            row_ids: list[int] = continuations[row].tolist()
            out.append(
                ModelRun(
                    continuation_ids=row_ids,
                    # decode of a list of ids is one string (transformers types it str | list[str])
                    continuation=cast(str, tokenizer.decode(row_ids, skip_special_tokens=True)),
                    tokens=[cast(str, tokenizer.decode([i])) for i in row_ids],
                    act_mean=act.astype(np.float64),
                    written_mean=None if written is None else written.astype(np.float64),
                    lens_residual=residual[row],
                    lens_mlp=mlp[row],
                )
            )
        return out


__all__ = [
    "LabSession",
    "LabResult",
    "TokensResult",
    "ExamplesResult",
    "LabProtocol",
    "ModelRun",
    "ProbeLens",
    "RequestCancelled",
]
