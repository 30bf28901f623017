"""`compute`: record a base/tuned model pair and write every statistic of METHOD §2, §3 and §7 to one cache file."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from neuron_explorer.cache import layout
from neuron_explorer.cache.atomic import check_output_folder
from neuron_explorer.cache.provenance import software_versions
from neuron_explorer.cache.writer import CacheWriter
from neuron_explorer.engine.defaults import (
    DEFAULT_CLUSTER_TOP_K,
    DEFAULT_N_CLUSTERS,
    IDENTITY_SAMPLE_SIZE,
    PATCH_HOLDOUT,
    default_cache_path,
    default_probe_path,
)
from neuron_explorer.engine.measure.probe import (
    TOXIC_EMBEDDING,
    Probe,
    load_probe,
    seed_list_of,
    toxic_embedding_direction,
)
from neuron_explorer.engine.measure.prompts import hold_out_for_patching, load_prompts
from neuron_explorer.engine.measure.scoring import get_scorer
from neuron_explorer.engine.model.distributed import BatchGather, collective_seconds, current_ranks
from neuron_explorer.engine.model.loading import (
    EMBEDDED_BASE,
    EMBEDDED_TUNED,
    LoadedModel,
    LoadOptions,
    check_pair,
    load_model,
    parse_max_memory,
    weights_loaded,
)
from neuron_explorer.engine.model.planning import LOGIT_LENS_CHUNK
from neuron_explorer.engine.model.weights import (
    LENS_RANKINGS,
    lens_memo,
    lens_rule,
    lens_top_k,
    memo_complete,
    probe_projections,
    value_cosines,
    value_tokens,
    vocabulary,
)
from neuron_explorer.engine.neurons.difference_lens import corpus_sequences, measure_difference, prompt_sequences
from neuron_explorer.engine.neurons.dynamics import checkpoint_contribution
from neuron_explorer.engine.neurons.identity_check import (
    POOLING_TOLERANCE,
    check_identity,
    pooling_residuals,
    sample_prompts,
)
from neuron_explorer.engine.neurons.recording import PromptMeans, Recording, record_model
from neuron_explorer.engine.neurons.results import write_dynamics, write_statistics, write_token_tables
from neuron_explorer.engine.neurons.statistics import layer_columns, neuron_metrics
from neuron_explorer.errors import UserError
from neuron_explorer.events import Reporter, Tracker, ignore
from neuron_explorer.spec.settings import (
    POSITION_PROTOCOLS,
    PROMPTS,
    SCORER,
    DeviceSettings,
    RecordingSettings,
    flat_record,
)

AUTO_PROBE = "auto"


@dataclass
class ComputeSettings:
    base: str = EMBEDDED_BASE
    tuned: str = EMBEDDED_TUNED
    probe: str = AUTO_PROBE
    prompts: str = PROMPTS
    prompt_column: str | None = None
    output: Path = field(default_factory=default_cache_path)
    recording: RecordingSettings = field(default_factory=RecordingSettings)
    max_prompts: int | None = None
    patch_holdout: float = PATCH_HOLDOUT  # fraction of the prompts kept aside for patch runs (none recorded on them)
    identity_check: int | None = IDENTITY_SAMPLE_SIZE  # prompts the identity check measures; None: all
    device: str = DeviceSettings.device
    dtype: str = DeviceSettings.dtype
    device_map: str | None = None
    max_memory: str | None = None  # "0=20GiB,cpu=60GiB": accelerate's per-device limits with device_map
    cluster_top_k: int = DEFAULT_CLUSTER_TOP_K
    n_clusters: int = DEFAULT_N_CLUSTERS
    tokens_per_neuron: int = 10
    lens: str = "auto"  # which value vectors get their tokens: auto, all, or N per ranking (weights.lens_rule)
    detector_scorer: str = SCORER  # labels the base continuations for the detector AUROC
    difference_lens: bool = True  # where the pair differs on the corpus and the prompts (difference_lens.py)
    checkpoints: tuple[str, ...] = ()  # earlier checkpoints of `tuned`, oldest first: the dynamics (dynamics.py)


@dataclass
class ComputeResult:
    path: Path
    summary: dict
    groups: dict
    layers: dict  # the per-layer columns: Σ Δ, measured change, identity residuals
    identity_prompts: int  # how many prompts the identity check measured
    checks: dict  # the verdicts stored as /layers attributes (`verdicts`)
    seconds: dict


def run_compute(
    settings: ComputeSettings, extra_tables: dict[str, dict] | None = None, report: Reporter = ignore
) -> ComputeResult | None:
    """Load the pair, record both models, derive the statistics and write the cache atomically; each step's progress
    goes to `report` (job events). Under torchrun every rank records its share of the batches and of the identity
    check's prompts and value vectors (`engine/model/distributed.py`); rank 0 alone writes and returns the result,
    the other ranks return None."""
    return ComputeRun(settings, report).run(extra_tables or {})


class ComputeRun:
    """`run_compute`'s steps in the order they run, over the state they share: the loaded pair, the probe, the
    prompts, and each step's seconds (`timings`, the result's `seconds`). Every rank runs the steps up to the
    value-vector tokens on its share of the work; rank 0 alone then writes."""

    def __init__(self, settings: ComputeSettings, report: Reporter) -> None:
        self.settings = settings
        self.ranks = ranks = current_ranks()
        self.report = report if ranks.main else ignore
        self.output = Path(settings.output).expanduser()
        check_output_folder(self.output)
        if settings.checkpoints and ranks.world_size > 1:
            raise UserError(
                "a series of checkpoints (--tuned A --tuned B …) runs in one process: drop torchrun or "
                "the earlier checkpoints"
            )
        if settings.device_map and ranks.world_size > 1:
            raise UserError(
                "--device-map spreads one model over the GPUs; under torchrun each process holds a whole "
                "model: drop one of them"
            )
        self.timings: dict[str, float] = {}
        with self.timed("load"):
            prompts = load_prompts(settings.prompts, column=settings.prompt_column, max_prompts=settings.max_prompts)
            self.prompts, self.patch_prompts = hold_out_for_patching(prompts, settings.patch_holdout)
            # a missing scorer fails before recording
            self.scorer = get_scorer(settings.detector_scorer) if ranks.main else None
            self.load = LoadOptions(
                device=ranks.device(settings.device),
                dtype=settings.dtype,
                device_map=settings.device_map,
                max_memory=parse_max_memory(settings.max_memory),
            )
            self.pre = load_model(settings.base, **self.load)
            self.dpo = load_model(settings.tuned, **self.load)
            check_pair(self.pre, self.dpo)
            self.probe = resolve_probe(settings.probe, self.pre)
            self.unit = self.probe.unit
        pre = self.pre
        self.n_layers, self.d_mlp, self.d_model = pre.arch.n_layers(pre.model), pre.arch.d_mlp(pre.model), pre.d_model
        self.sample = sample_prompts(len(self.prompts.texts), settings.identity_check)

    @contextmanager
    def timed(self, step: str) -> Iterator[None]:
        """Add the body's seconds to `timings[step]` (the statistics' weight work is timed in several parts)."""
        clock = time.perf_counter()
        yield
        self.timings[step] = self.timings.get(step, 0.0) + time.perf_counter() - clock

    def task(self, stage: str, total: int):
        return Tracker(self.report, stage, total).advance

    def models(self) -> tuple[tuple[str, LoadedModel], ...]:
        return ("pre", self.pre), ("dpo", self.dpo)

    def run(self, extra_tables: dict[str, dict]) -> ComputeResult | None:
        """Record, measure and (rank 0) write the cache with `extra_tables` beside the statistics."""
        settings, ranks, pre, dpo = self.settings, self.ranks, self.pre, self.dpo
        provenance = {
            "base": pre.description,
            "tuned": dpo.description,
            "probe": self.probe.provenance(),
            "prompts": self.prompts.provenance(),
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in flat_record(settings).items()},
            "distributed": ranks.provenance(),
            "versions": software_versions(),
        }
        scales_write = pre.arch.output_norm_path is not None
        pooled = (
            {name: PromptMeans(self.n_layers, self.d_mlp, scales_write, self.sample) for name in ("pre", "dpo")}
            if ranks.main
            else {}
        )
        writing = (
            CacheWriter(
                self.output,
                n_layers=self.n_layers,
                d_mlp=self.d_mlp,
                d_model=self.d_model,
                architecture=pre.arch.name,
                provenance=provenance,
            )
            if ranks.main
            else nullcontext()
        )
        with writing as writer:
            datasets = (
                {name: writer.prompt_activations(name, len(self.prompts.texts)) for name in ("pre", "dpo")}
                if writer is not None  # rank 0
                else {}
            )
            recordings = self.record(writer, datasets, pooled)
            with self.timed("weights"):
                weights = {name: probe_projections(loaded, self.unit) for name, loaded in self.models()}
            with self.timed("identity"):
                checks = self.identity_checks(recordings, weights, pooled)
            with self.timed("weights"):
                metrics = neuron_metrics(
                    p_pre=weights["pre"]["p"],
                    p_dpo=weights["dpo"]["p"],
                    cos_pre=weights["pre"]["cos"],
                    cos_dpo=weights["dpo"]["cos"],
                    value_cos=value_cosines(pre, dpo),
                    act_pre=recordings["pre"].act_mean,
                    act_dpo=recordings["dpo"].act_mean,
                    written_pre=recordings["pre"].written_mean,
                    written_dpo=recordings["dpo"].written_mean,
                )
            with self.timed("lens"):
                rule, tokens = self.value_vector_tokens(metrics)
            if ranks.world_size > 1:
                self.timings["of which collectives"] = collective_seconds()
            if not ranks.main:
                return None
            if writer is None:
                raise RuntimeError("rank 0 writes the cache, but its writer is not open")

            with self.timed("weights"):
                layers, verdicts = self.layers_and_verdicts(metrics, recordings, weights, checks, pooled)
                write_token_tables(writer, tokens, vocabulary(pre.tokenizer))
                computed = int((tokens["top_tokens_pre"][..., 0] >= 0).sum())
                writer.write_attrs({layout.LENS_RULE: rule.record(computed)}, layout.NEURONS)
            with self.timed("statistics"):
                continuations_pre = recordings["pre"].continuations or [""] * len(self.prompts.texts)
                groups, summary = self.write_statistics(
                    writer, metrics, layers, verdicts, recordings, checks, datasets, continuations_pre
                )
                if self.patch_prompts is not None:
                    writer.write_table(layout.PATCH_PROMPTS, self.patch_prompts["columns"], self.patch_prompts["attrs"])
                for name, table in extra_tables.items():
                    writer.write_table(name, table["columns"], table.get("attrs"))
            if settings.difference_lens:
                with self.timed("difference lens"):
                    self.write_differences(writer, continuations_pre)
            if settings.checkpoints:
                with self.timed("dynamics"):
                    self.write_dynamics(writer, recordings, weights, metrics)
        return ComputeResult(
            path=self.output,
            summary=summary,
            groups=groups,
            layers=layers,
            identity_prompts=len(self.sample),
            checks=verdicts,
            seconds=self.timings,
        )

    def record(self, writer, datasets: dict, pooled: dict) -> dict:
        """Record both models (the tuned one on the base model's continuations with `shared_continuation`): the
        running means the cache publishes, and on rank 0 each prompt's activations (float16, into the file) and
        per-prompt means (the pooling check)."""
        settings = self.settings
        recordings: dict[str, Recording] = {}
        for name, loaded in self.models():
            with self.timed(f"record_{name}"):
                shared = name == "dpo" and settings.recording.shared_continuation
                teacher = recordings["pre"].continuation_ids if shared else None
                advance = self.task(f"recording {'base' if name == 'pre' else 'tuned'} model", len(self.prompts.texts))

                def receive(batch, dataset=datasets.get(name), pool=pooled.get(name), advance=advance) -> None:
                    start, act, written, counts = batch
                    dataset[start : start + len(act)] = act.astype(np.float16)
                    pool.add(start, act, written, counts)
                    writer.check()
                    advance(len(act))

                gather = BatchGather(self.ranks, len(self.prompts.texts), settings.recording.batch_size, receive)
                recording = record_model(
                    loaded,
                    self.prompts.texts,
                    **record_options(settings.recording),
                    teacher_tokens=teacher,
                    sink=lambda *batch, gather=gather: gather.send(batch),
                    ranks=self.ranks,
                )
                gather.finish()
                recordings[name] = recording.pooled(self.ranks)
        return recordings

    def identity_checks(self, recordings: dict, weights: dict, pooled: dict) -> dict:
        """Σ Δ against the measured change of the MLP's write, per model, on the sample of prompts."""
        ranks, settings = self.ranks, self.settings
        return {
            name: check_identity(
                loaded,
                self.prompts.texts,
                recordings[name],
                self.sample,
                self.unit,
                weights[name],
                pooled[name].written_mean("sample") if ranks.main else None,
                positions=settings.recording.positions,
                max_prompt_tokens=settings.recording.max_prompt_tokens,
                ranks=ranks,
                advance=self.task(
                    f"identity check ({'base' if name == 'pre' else 'tuned'})",
                    len(self.sample[ranks.rank :: ranks.world_size]),
                ),
            )
            for name, loaded in self.models()
        }

    def value_vector_tokens(self, metrics: dict):
        """The lens rule (which neurons get their value vectors' tokens) and those tokens for both models: each rank
        takes every world_size-th layer, rank 0 puts the layers back together (empty on the other ranks)."""
        settings, ranks, pre, n_layers = self.settings, self.ranks, self.pre, self.n_layers
        tokens, memos = {}, {"pre": lens_memo(pre), "dpo": lens_memo(self.dpo)}
        rule = lens_rule(
            settings.lens,
            device=str(pre.device),
            n_layers=n_layers,
            d_mlp=self.d_mlp,
            vocab=pre.arch.unembedding(pre.model).shape[0],
            d_model=self.d_model,
            memo_complete=all(memo_complete(memo, n_layers, settings.tokens_per_neuron) for memo in memos.values()),
        )
        chosen = rule.neurons(metrics)
        my_layers = range(ranks.rank, n_layers, ranks.world_size)
        for name, loaded in self.models():
            found = value_tokens(
                loaded,
                settings.tokens_per_neuron,
                layers=my_layers,
                memo=memos[name],
                neurons=chosen,
                advance=self.task(f"value-vector tokens ({'base' if name == 'pre' else 'tuned'})", len(my_layers)),
            )
            parts = ranks.gather(found)
            if parts is not None:  # rank 0 alone gathers
                for key in found:
                    whole = np.zeros((n_layers, *found[key].shape[1:]), dtype=found[key].dtype)
                    for rank, part in enumerate(parts):
                        whole[rank :: ranks.world_size] = part[key]
                    tokens[f"{key}_{name}"] = whole
        return rule, tokens

    def layers_and_verdicts(
        self, metrics: dict, recordings: dict, weights: dict, checks: dict, pooled: dict
    ) -> tuple[dict, dict]:
        """The per-layer columns (Σ Δ, the measured change, the identity's residuals) and the checks' verdicts: the
        identity within its tolerance, and the published means against the per-prompt means in the file."""
        pooling = {
            name: published_against_prompts(recordings[name], pooled[name], weights[name]["p"]) for name in pooled
        }
        layers = layer_columns(
            metrics["contribution"],
            residual={name: checks[name].residual for name in checks},
            mlp_proj={name: checks[name].measured for name in checks},
            write_scale={name: checks[name].scale for name in checks},
            bias_proj={name: weights[name]["bias_proj"] for name in weights},
            sample_written={name: pooled[name].written_mean("sample") for name in pooled},
            p={name: weights[name]["p"] for name in weights},
            pooling={name: pooling[name]["sum"] for name in pooling},
        )
        verdicts = {
            "identity_dtype": str(self.pre.model.dtype).removeprefix("torch."),
            "identity_tolerance": checks["pre"].tolerance,
            "identity_passed": all(check.passed for check in checks.values()),
            "pooling_tolerance": POOLING_TOLERANCE,
            "pooling_relative": max(part["relative"] for part in pooling.values()),
        }
        verdicts["pooling_passed"] = verdicts["pooling_relative"] <= POOLING_TOLERANCE
        return layers, verdicts

    def write_statistics(
        self,
        writer,
        metrics: dict,
        layers: dict,
        verdicts: dict,
        recordings: dict,
        checks: dict,
        datasets: dict,
        continuations_pre: list[str],
    ) -> tuple[dict, dict]:
        """The prompts with the base continuations' scores, the probe, the neuron and layer statistics, groups and
        clusters, and the protocol and the checks as attributes; returns the groups and the summary."""
        settings, prompts, scorer = self.settings, self.prompts, self.scorer
        if scorer is None:
            raise RuntimeError("rank 0 writes the statistics, but its scorer is not loaded")
        toxicity_pre = scorer.score(continuations_pre)
        writer.write_prompts(
            {
                "text": prompts.texts,
                "n_tokens": np.array(recordings["pre"].prompt_tokens, dtype=np.int32),
                "continuation_pre": continuations_pre,
                "continuation_dpo": recordings["dpo"].continuations or [""] * len(prompts.texts),
                "toxicity_pre": toxicity_pre,
            }
        )
        writer.write_array(layout.PROBE_DIRECTION, self.probe.direction, self.probe.provenance())
        groups, summary = write_statistics(
            writer,
            metrics,
            layers,
            datasets["pre"],
            datasets["dpo"],
            toxicity_pre=toxicity_pre,
            scorer=scorer.name,
            cluster_top_k=settings.cluster_top_k,
            n_clusters=settings.n_clusters,
        )
        writer.write_attrs(
            {layout.POSITIONS: settings.recording.positions, layout.PROTOCOL: protocol_description(settings)}
        )
        layer_attrs = {
            "identity_prompts": json.dumps(self.sample.tolist()),
            "identity_sample_size": len(self.sample),
            **verdicts,
        }
        for name in ("pre", "dpo"):
            layer_attrs[f"n_positions_{name}"] = recordings[name].n_positions
            layer_attrs[f"identity_positions_{name}"] = checks[name].n_positions
        writer.write_attrs(layer_attrs, layout.LAYERS)
        return groups, summary

    def write_differences(self, writer, continuations_pre: list[str]) -> None:
        """Where the pair differs, on the neutral corpus and on the prompts with the base continuations."""
        pre = self.pre
        sources = {
            "corpus": corpus_sequences(pre),
            "prompts": prompt_sequences(
                pre, self.prompts.texts, continuations_pre, self.settings.recording.max_prompt_tokens
            ),
        }
        for source, sequences in sources.items():
            found = measure_difference(pre, self.dpo, sequences, source)
            writer.write_table(layout.difference_path(source), found.arrays(pre, self.unit), found.attrs())

    def write_dynamics(self, writer, recordings: dict, weights: dict, metrics: dict) -> None:
        """Σ Δ per group along the earlier checkpoints of the tuned model, then the tuned model itself."""
        settings = self.settings
        record = record_options(settings.recording)
        steps = [
            checkpoint_contribution(
                spec,
                self.pre,
                recordings["pre"],
                weights["pre"],
                self.unit,
                self.load,
                record,
                self.prompts.texts,
                settings.recording.shared_continuation,
            )
            for spec in settings.checkpoints
        ]
        write_dynamics(
            writer, [*settings.checkpoints, settings.tuned], [*steps, metrics["contribution"]], metrics["group"]
        )


def published_against_prompts(recording, pool: PromptMeans, p: np.ndarray) -> dict:
    """The running totals (what the cache publishes) against the per-prompt means that reached the file: ā, and with
    an output norm the mean of m·s_t that P uses; "sum" is the error in Σ P, "relative" the worst of both."""
    parts = [pooling_residuals(recording.act_mean, pool.act_mean("all"), p)]
    if recording.written_mean is not None:
        parts.append(pooling_residuals(recording.written_mean, pool.written_mean("all"), p))
    return {"sum": parts[-1]["sum"], "relative": max(float(part["relative"].max()) for part in parts)}


def plan_compute_run(settings: ComputeSettings):
    """The run's plan before anything heavy loads (`planning.Plan`: sizes from the configs, memory per device, what
    fits), and the prompts it would record (for a warm-up)."""
    from neuron_explorer.engine.model.planning import plan_compute

    prompts = load_prompts(settings.prompts, column=settings.prompt_column, max_prompts=settings.max_prompts)
    prompts, _ = hold_out_for_patching(prompts, settings.patch_holdout)
    plan = plan_compute(
        settings.base,
        settings.tuned,
        settings.recording,
        len(prompts.texts),
        device=settings.device,
        dtype=settings.dtype,
        device_map=settings.device_map,
        max_memory=settings.max_memory,
        output=settings.output,
    )
    return plan, prompts.texts


def warm_up(plan, settings: ComputeSettings, texts: list[str]) -> dict[str, float]:
    """Time loading the base model, one batch of recording, one full forward pass (what the identity check runs per
    batch of its sample) and one logit-lens chunk, and extrapolate to the whole run: both models load, record every
    batch, check the sample and take the value vectors of the lens rule's neurons."""
    started = time.perf_counter()
    loaded = load_model(
        settings.base,
        device=settings.device,
        dtype=settings.dtype,
        device_map=settings.device_map,
        max_memory=parse_max_memory(settings.max_memory),
    )
    loading = time.perf_counter() - started
    batch = texts[: settings.recording.batch_size]
    record = record_options(settings.recording)
    record_model(loaded, batch[:1], **{**record, "new_tokens": 1})  # the first call pays one-time costs
    started = time.perf_counter()
    record_model(loaded, batch, **record)
    per_batch = time.perf_counter() - started
    length = settings.recording.max_prompt_tokens + settings.recording.new_tokens
    ids = torch.full((len(batch), length), loaded.tokenizer.eos_token_id or 0, device=loaded.device)
    with torch.inference_mode():
        started = time.perf_counter()
        loaded.model(input_ids=ids)
        per_forward = time.perf_counter() - started
    arch, model = loaded.arch, loaded.model
    with (
        torch.inference_mode(),
        weights_loaded(arch.final_norm(model), model.get_output_embeddings(), arch.layers(model)[0]),
    ):
        vectors = arch.value_vectors(model, 0)[:LOGIT_LENS_CHUNK]
        started = time.perf_counter()
        lens_top_k(loaded, vectors, settings.tokens_per_neuron)  # one chunk of weights.value_tokens
        per_chunk = time.perf_counter() - started
    size = plan.models[0]
    n_batches = math.ceil(len(texts) / settings.recording.batch_size)
    sample = len(sample_prompts(len(texts), settings.identity_check))
    remembered = memo_complete(lens_memo(loaded), size.n_layers, settings.tokens_per_neuron)
    rule = lens_rule(
        settings.lens,
        device=str(loaded.device),
        n_layers=size.n_layers,
        d_mlp=size.d_mlp,
        vocab=size.vocab,
        d_model=size.d_model,
        memo_complete=remembered,
    )
    neurons = (
        size.n_layers * size.d_mlp
        if rule.top_n is None
        else min(len(LENS_RANKINGS) * rule.top_n, size.n_layers * size.d_mlp)
    )
    neurons = 0 if remembered else neurons  # read back from the memo (the tuned model's may still be computed)
    estimate = {
        "loading": 2 * loading,
        "recording": 2 * n_batches * per_batch,
        "identity check": 2 * math.ceil(sample / settings.recording.batch_size) * per_forward,
        "value-vector tokens": 2 * per_chunk * neurons / LOGIT_LENS_CHUNK,
    }
    estimate["total"] = sum(estimate.values())
    return estimate


def record_options(recording: RecordingSettings) -> dict:
    """The keyword arguments of `record_model` that the settings choose (`shared_continuation` is the caller's)."""
    return dict(
        positions=recording.positions,
        new_tokens=recording.new_tokens,
        max_prompt_tokens=recording.max_prompt_tokens,
        batch_size=recording.batch_size,
    )


def protocol_description(settings: ComputeSettings) -> str:
    """One line for the cache's `protocol` attribute: which positions were averaged, on whose tokens."""
    recording = settings.recording
    parts = [
        POSITION_PROTOCOLS[recording.positions],
        f"N = {recording.new_tokens} new tokens",
        f"prompts truncated to {recording.max_prompt_tokens} tokens",
    ]
    if recording.shared_continuation:
        parts.append("the tuned model read the base model's continuation")
    return "; ".join(parts)


def resolve_probe(spec: str, base: LoadedModel) -> Probe:
    """A probe file, `toxic-embedding[:ours|authors]`, or `auto`: the build's trained probe if it exists, else
    toxic-embedding."""
    if spec == AUTO_PROBE:
        path = default_probe_path()
        spec = str(path) if path.exists() and base.spec == EMBEDDED_BASE else TOXIC_EMBEDDING
    seed_words = seed_list_of(spec)
    if seed_words is not None:
        return toxic_embedding_direction(base, seed_words)
    return load_probe(spec, base.d_model)
