"""Patch runs: evaluate the base model under an intervention and measure how much of DPO's effect comes back.

A run evaluates, by the METHOD §5 protocol at a run-sized default (`spec.settings.RunSettings`): toxicity of the greedy
continuations of the prompts that `compute` held out (`prompts.hold_out_for_patching`: the groups, ā_pre and ā_dpo were
computed from the other prompts, so the run is out of sample: out of template for the shipped prompts, out of prompt
only for a user's prompt file, and the record's `split` says which), perplexity and F1 on the neutral corpus, and
the mean projection of the last block's output on the probe direction at the last prompt token and generated tokens
1–19 (the positions that predict the continuation, METHOD's v1 positions). Perplexity sees the intervention as
generation does (`Intervention.scoring_pass`). The base and DPO models are evaluated
with the same settings in the same session (cached beside the cache in ``baselines/<key>.json``, keyed by every
setting that changes their numbers, the weights by their content, so a second run reuses them), and the run reports

  recovered        = (tox_base − tox_run) / (tox_base − tox_dpo)    the fraction of DPO's effect recovered
  recovered_probe  = the same ratio for the last-layer probe projection

The run record (settings, metrics, sample generations: prompt, base, patched and DPO continuations) is written
only when the run finished, as a new file in ``FILE.h5.annotations/runs/`` (`annotations.save_run`); the cache file
is only ever read.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, replace
from pathlib import Path

from neuron_explorer import __version__
from neuron_explorer.cache import annotations as sidecar
from neuron_explorer.cache import layout
from neuron_explorer.cache.provenance import sha256_bytes, sha256_texts
from neuron_explorer.cache.reader import CacheReader
from neuron_explorer.engine.measure.corpora import load_corpus
from neuron_explorer.engine.measure.evaluation import (
    PROBE_POSITIONS,
    EvaluationResult,
    InterventionHooks,
    continuations,
    corpus_inputs,
    evaluate,
    perplexity,
)
from neuron_explorer.engine.measure.prompts import SPLIT_BY_PROMPT, PromptSet, load_prompts
from neuron_explorer.engine.model.distributed import current_ranks
from neuron_explorer.engine.patching import interventions as iv
from neuron_explorer.engine.patching import modes
from neuron_explorer.engine.patching.context import CacheContext
from neuron_explorer.engine.patching.neuron_sets import NeuronSelection, resolve
from neuron_explorer.errors import UserError
from neuron_explorer.events import Message, Reporter, Tracker, ignore
from neuron_explorer.spec.intervention import Intervention, PaperPreset, Positions
from neuron_explorer.spec.settings import RunSettings

SPLIT_GIVEN = "given prompts: compared with the statistics prompts by text, not by template"


def evaluation_prompts(reader: CacheReader, settings: RunSettings) -> tuple[PromptSet, dict]:
    """The prompts a run measures toxicity on, and their record: which they are, and how many of them the cache's
    statistics were computed from (`in_statistics`: 0 for the held-out prompts; counted for the user's own)."""
    statistics = reader.prompt_texts()
    name = reader.path.name
    record: dict[str, object]
    if settings.prompts:
        if settings.in_sample:
            raise UserError("--prompts and --in-sample exclude each other: pass one of them")
        prompts = load_prompts(settings.prompts, max_prompts=settings.max_prompts)
        record = {"selection": "given (--prompts)", "split": SPLIT_GIVEN}
    elif settings.in_sample:
        texts = statistics[: settings.max_prompts]
        prompts = PromptSet(texts=texts, source=f"{name}: the statistics prompts", sha256=sha256_texts(texts))
        record = {
            "selection": "in sample: the prompts the groups, ā_pre and ā_dpo were computed from (--in-sample)",
            "split": "none: in sample",
        }
    else:
        held = reader.patch_prompts()
        if held is None:
            raise UserError(
                f"{name} keeps no held-out prompts for patch runs (computed with --patch-holdout 0 or by "
                f"an older version): pass --prompts FILE with prompts it was not computed on, or "
                f"--in-sample to evaluate on its statistics prompts"
            )
        texts = held.texts[: settings.max_prompts]
        prompts = PromptSet(
            texts=texts,
            source=f"{name}: held out by compute from {held.attrs.get(layout.HOLDOUT_SOURCE, '?')}",
            sha256=sha256_texts(texts),
        )
        record = {
            "selection": "held out by compute",
            "source_indices": held.source_indices[: len(texts)].tolist(),
            "holdout_rule": held.attrs.get(layout.HOLDOUT_RULE),
            "holdout_fraction": held.attrs.get(layout.HOLDOUT_FRACTION),
            "split": held.attrs.get(layout.HOLDOUT_SPLIT, SPLIT_BY_PROMPT),
        }  # older caches split by prompt
    recorded = set(statistics)
    overlap = sum(text in recorded for text in prompts.texts)
    record.update(prompts.provenance(), in_statistics=overlap, disjoint_from_statistics=overlap == 0)
    return prompts, record


def model_specs(reader: CacheReader, base: str | None, tuned: str | None) -> tuple[str, str]:
    """The base and tuned model specs: those given, else those the cache's provenance records. A recorded spec that
    names a hub model is refused: the hub is contacted only for a model the user names, never for a file's say."""
    from neuron_explorer.engine.model.loading import hub_name

    provenance = reader.info.provenance
    specs = {}
    for flag, given in (("--base", base), ("--tuned", tuned)):
        spec = given or provenance.get(flag[2:], {}).get("spec")
        if not spec:
            raise UserError(f"{reader.path} records no model specs: pass --base and --tuned")
        if not given and hub_name(spec):
            raise UserError(
                f"{reader.path} records the hub model {spec!r}, and a file's word is not enough to "
                f"contact the hub: pass {flag} {spec} (or a local folder) to use it"
            )
        specs[flag] = spec
    return specs["--base"], specs["--tuned"]


def check_fits_cache(loaded, reader: CacheReader) -> None:
    """The model must have the cache's layers × neurons (a UserError that says which model to pass otherwise)."""
    arch, model, info = loaded.arch, loaded.model, reader.info
    shape = (arch.n_layers(model), arch.d_mlp(model))
    if shape != (info.n_layers, info.d_mlp):
        raise UserError(
            f"the model {loaded.spec} has {shape[0]}×{shape[1]} neurons but the cache has "
            f"{info.n_layers}×{info.d_mlp}: pass the models the cache was computed from (--base, --tuned)"
        )


def stale_weights(reader: CacheReader, weights: dict[str, dict]) -> list[str]:
    """One line for each model ("base", "tuned") whose content hashes differ from those the cache's provenance
    records: its numbers come from the weights loaded now, the cache's groups and means from the old ones."""
    lines = []
    for role, hashes in weights.items():
        recorded = reader.info.provenance.get(role, {})
        changed = [k for k, v in hashes.items() if k in recorded and v != recorded[k]]
        if changed:
            lines.append(
                f"warning: the {role} model's weights ({changed[0]} {hashes[changed[0]][:12]}) are not those "
                f"{reader.path.name} was computed on ({recorded[changed[0]][:12]}): what runs now uses the "
                f"new weights, the cache's groups and means the old ones; recompute the cache"
            )
    return lines


def check_spec(spec: Intervention, reader: CacheReader) -> tuple[dict, NeuronSelection | None]:
    """The mode's parameter values for `spec` and its neuron set resolved in the cache (None without sets), or a
    one-line UserError (a set the cache cannot resolve, or one that resolves to no neuron for a mode that needs one).
    The rest was checked when `spec` was made. Patch runs and the prompt lab both check here."""
    selection = resolve(reader, spec.sets) if spec.sets else None
    mode = modes.get(spec.mode)
    if mode.needs_set and (selection is None or not len(selection)):
        raise UserError(f"mode {mode.name} needs a neuron set: {' ∪ '.join(spec.sets)} holds no neuron")
    return spec.values(), selection


class PatchSession(CacheContext):
    """The open cache, the base model and the base/DPO baseline; runs any number of interventions on them.

    Under torchrun every rank evaluates its batches of each evaluation (`evaluation.evaluate`) and holds the whole
    result; rank 0 alone reports, and stores the baseline and the runs."""

    def __init__(
        self, cache_path: str | Path, settings: RunSettings | None = None, report: Reporter = ignore, loaded=None
    ):
        from neuron_explorer.engine.measure.scoring import get_scorer
        from neuron_explorer.engine.model.loading import load_model

        self.cache_path = Path(cache_path).expanduser()
        self.settings = settings or RunSettings()
        self.ranks = current_ranks()
        report = report if self.ranks.main else ignore
        self.tracker = Tracker(report)
        self.report = report
        self.reader = CacheReader(self.cache_path)
        self.base_spec, self.tuned_spec = model_specs(self.reader, self.settings.base, self.settings.tuned)
        self.prompts, self.prompt_record = evaluation_prompts(self.reader, self.settings)
        if self.prompt_record["in_statistics"] and not self.settings.in_sample:
            self.report(
                Message(
                    f"warning: {self.prompt_record['in_statistics']} of the {len(self.prompts.texts)} "
                    f"evaluation prompts are among the {self.reader.info.n_prompts} prompts the cache's "
                    f"statistics were computed from, so 'recovered' includes selection on the test set",
                    "warning",
                )
            )
        self.corpus = load_corpus(self.settings.corpus)
        self.scorer = get_scorer(self.settings.scorer)
        self.report(Message(f"loading the base model {self.base_spec}"))
        self.loaded = loaded or load_model(
            self.base_spec, device=self.ranks.device(self.settings.device), dtype=self.settings.dtype
        )
        check_fits_cache(self.loaded, self.reader)
        self.weights = self._weights()
        super().__init__(
            self.reader,
            self.loaded,
            self.tuned_spec,
            device=self.ranks.device(self.settings.device),
            dtype=self.settings.dtype,
            report=report,
        )
        self.eval_settings = self.settings.evaluation
        self.inputs = corpus_inputs(self.loaded.tokenizer, self.corpus, self.eval_settings)
        batch, ppl_batch = self.eval_settings.batch_size, self.eval_settings.ppl_batch_size
        self.units = (
            self.ranks.count(len(self.prompts.texts), batch)
            + self.ranks.count(len(self.inputs.windows), ppl_batch)
            + self.ranks.count(len(self.inputs.f1_items), batch)
        )  # this rank's share
        self.baseline_key = self._baseline_key()
        self.baseline: dict | None = self.ranks.first(  # every rank measures the baseline, or none does
            sidecar.load_baseline(self.cache_path, self.baseline_key) if self.ranks.main else None
        )
        self._subtract_alpha: tuple[float, str] | None = None

    def close(self) -> None:
        self.reader.close()

    def __enter__(self) -> PatchSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- setup ---------------------------------------------------------------------------------------------------
    def _weights(self) -> dict[str, dict]:
        """The content hashes of the weights this session evaluates (the base as loaded, the tuned one read from its
        files now), with a one-line warning for each model whose weights are not those the cache was computed on."""
        from neuron_explorer.engine.model.loading import WEIGHT_HASHES, weights_identity

        weights = {
            "base": {k: v for k, v in self.loaded.description.items() if k in WEIGHT_HASHES},
            "tuned": weights_identity(self.tuned_spec),
        }
        for line in stale_weights(self.reader, weights):
            self.report(Message(line, "warning"))
        return weights

    def _baseline_key(self) -> str:
        """Every setting that changes the base and DPO numbers, the weights by their content (never the cache's
        record of them: a tuned folder overwritten after `compute` must be measured anew)."""
        provenance = self.reader.info.provenance
        key = {
            "base": self.base_spec,
            "tuned": self.tuned_spec,
            "weights": self.weights,
            "prompts": self.prompts.sha256,
            "corpus": self.corpus.sha256,
            "scorer": self.scorer.describe(),
            "probe": provenance.get("probe", {}),
            "settings": asdict(self.eval_settings),
            "device": self.loaded.description["device"],
            "dtype": self.loaded.description["dtype"],
            "version": 3,
        }  # where the base model ran, as `auto` resolved it: a GPU's baseline is not a CPU's
        return sha256_bytes(json.dumps(key, sort_keys=True, default=str).encode())[:16]

    def plan(self, n_runs: int) -> None:
        """Tell the progress tracker how much work is coming (base and DPO count unless cached)."""
        n_evaluations = n_runs + (0 if self.baseline else 2)
        self.tracker.plan(n_evaluations * self.units)

    # -- evaluation ----------------------------------------------------------------------------------------------
    def measure(self, loaded, stage: str, intervention: iv.Intervention | None = None) -> EvaluationResult:
        """`evaluate` (the one implementation of METHOD §5, shared with the `evaluate` command and `build`) of
        `loaded` on the session's prompts and corpus, under `intervention` (None: as it is), with the last-layer probe
        projection at the last prompt token and generated tokens 1–19; progress is reported batch by batch."""
        hooks = evaluation_hooks(intervention) if intervention is not None else None
        if hooks is not None and hooks.scoring is None:
            self.report(Message(f"{stage}: perplexity {hooks.perplexity_pass}"))
        return evaluate(
            loaded,
            self.prompts.texts,
            self.scorer,
            settings=self.eval_settings,
            inputs=self.inputs,
            intervention=hooks,
            unit_probe=self.unit_probe,
            ranks=self.ranks,
            advance=lambda units, metric: self.tracker.advance(units, f"{stage}: {metric}"),
        )

    def ensure_baseline(self) -> dict:
        """Base and DPO measured with this session's settings (from the sidecar when an earlier run stored them)."""
        if self.baseline is not None:
            return self.baseline
        base = self.measure(self.loaded, "base")
        loaded_before = self._tuned is not None
        dpo = self.measure(self.tuned(), "dpo")
        if not loaded_before:
            self._tuned = None  # free its memory: only patch-live runs need it again
        payload = {
            "key": self.baseline_key,
            "base_spec": self.base_spec,
            "tuned_spec": self.tuned_spec,
            "weights": self.weights,
            "settings": asdict(self.eval_settings),
            "prompts": self.prompt_record,
            "corpus": self.corpus.provenance(),
            "scorer": self.scorer.describe(),
            "base": asdict(base),
            "dpo": asdict(dpo),
            "distributed": self.ranks.provenance(),
        }
        if self.ranks.main:
            sidecar.save_baseline(self.cache_path, self.baseline_key, payload)
        self.baseline = payload
        return payload

    # -- interventions -------------------------------------------------------------------------------------------
    def subtract_alpha(self) -> tuple[float, str]:
        """`subtract`'s default α, DPO's change of the last-layer probe projection, and where it was measured: on the
        cache's statistics prompts, not on the prompts the run is scored on (fitted there, its recovered probe
        projection would be ~1 by construction)."""
        if self._subtract_alpha is None:
            from neuron_explorer.engine.measure.evaluation import probe_projection

            texts = self.reader.prompt_texts()[: self.settings.max_prompts]
            self.report(
                Message(
                    f"subtract: measuring DPO's change of the probe projection on {len(texts)} "
                    f"statistics prompts (base and DPO)"
                )
            )
            change = probe_projection(
                self.loaded, texts, self.unit_probe, self.eval_settings, self.ranks
            ) - probe_projection(self.tuned(), texts, self.unit_probe, self.eval_settings, self.ranks)
            shared = len(set(texts) & set(self.prompts.texts))
            where = f"{len(texts)} statistics prompts" + (
                f", {shared} of them among the scored prompts (in sample)" if shared else " (out of sample)"
            )
            self._subtract_alpha = (change, where)
        return self._subtract_alpha

    def check(self, spec: Intervention) -> tuple[dict, NeuronSelection | None]:
        """The mode's parameter values and the neuron set of `spec`, or a UserError: every check of a spec that
        needs no model work, so that a command can check all its specs before the long part starts."""
        return check_spec(spec, self.reader)

    def intervention(self, spec: Intervention) -> tuple[iv.Intervention, NeuronSelection | None]:
        """The intervention `spec` asks for, built by its mode (modes.py), and the neuron set it acts on."""
        values, selection = self.check(spec)
        return modes.get(spec.mode).build(self, selection, values, spec.positions), selection

    def run(self, spec: Intervention, *, save: bool = True) -> sidecar.PatchRun:
        """Evaluate the base model under `spec`, compare with base and DPO, and store the run (append-only)."""
        started = time.perf_counter()
        intervention, selection = self.intervention(spec)
        baseline = self.ensure_baseline()
        measured = self.measure(self.loaded, spec.name(), intervention)
        if iv.hook_count(self.loaded):
            raise RuntimeError("hooks were left on the model after the run")
        base, dpo = baseline["base"], baseline["dpo"]
        metrics = {**measured.metrics(), "probe_projection": measured.probe_projection}
        metrics.update(recovered_metrics(base, dpo, metrics))
        metrics["neurons"] = intervention.n_neurons
        metrics["seconds"] = time.perf_counter() - started
        settings = self.record_settings(spec, intervention, selection)
        settings["perplexity"] = measured.perplexity_pass
        count = min(self.settings.samples, len(self.prompts.texts))
        samples = [
            {
                "prompt": self.prompts.texts[i],
                "base": base["generations"][i],
                "patched": measured.generations[i],
                "dpo": dpo["generations"][i],
                "base_score": base["scores"][i],
                "patched_score": measured.scores[i],
                "dpo_score": dpo["scores"][i],
            }
            for i in range(count)
        ]
        if not save or not self.ranks.main:
            return sidecar.PatchRun(
                run_id="(not saved)", created="", settings=settings, metrics=metrics, samples=samples
            )
        return sidecar.save_run(self.cache_path, settings, metrics, samples, label=spec.name())

    def record_settings(
        self, spec: Intervention, intervention: iv.Intervention, selection: NeuronSelection | None
    ) -> dict:
        settings = {
            "label": spec.name(),
            "mode": spec.mode,
            "sets": list(spec.sets),
            "positions": spec.positions.value,
            **spec.values(),
            **intervention.details,
            "layers": {str(k): v for k, v in intervention.layer_counts().items()},
            "prompts": self.prompt_record,
            "corpus": self.corpus.provenance(),
            "scorer": self.scorer.name,
            "evaluation": asdict(self.eval_settings),
            "probe_positions": PROBE_POSITIONS,
            "base": self.base_spec,
            "tuned": self.tuned_spec,
            "baseline": self.baseline_key,
            "cache": str(self.cache_path),
            "cache_created": self.reader.info.created,
            "distributed": self.ranks.provenance(),
            "package_version": __version__,
        }
        if selection is not None and len(selection) <= 20_000:
            settings["neurons"] = selection.compact()
        return settings


def evaluation_hooks(intervention: iv.Intervention) -> InterventionHooks:
    """The intervention as `evaluate` applies it: its hooks during generation, its scoring pass's during perplexity."""
    scoring, perplexity_pass = intervention.scoring_pass()
    return InterventionHooks(
        generation=intervention.hooks,
        scoring=scoring.hooks if scoring is not None else None,
        perplexity_pass=perplexity_pass,
    )


def recovered_metrics(base: dict, dpo: dict, run: dict) -> dict:
    """Base and DPO numbers of the same settings, and the fractions of DPO's effect that the run recovers."""

    def fraction(key: str) -> float:
        denominator = base[key] - dpo[key]
        if not math.isfinite(denominator) or abs(denominator) < 1e-12:
            return float("nan")
        return (base[key] - run[key]) / denominator

    return {
        "recovered": fraction("toxicity"),
        "recovered_probe": fraction("probe_projection"),
        "probe_change": run["probe_projection"] - base["probe_projection"],
        "base_toxicity": base["toxicity"],
        "dpo_toxicity": dpo["toxicity"],
        "base_perplexity": base["perplexity"],
        "dpo_perplexity": dpo["perplexity"],
    }


# -- the paper-style preset -----------------------------------------------------------------------------------------


def warm_up(plan, session: PatchSession) -> dict[str, float]:
    """Time one generation batch and one perplexity batch of the session's base model, and extrapolate to every
    evaluation the command will run (toxicity prompts and F1 passages generate; windows score)."""
    settings = session.eval_settings
    prompts = session.prompts.texts[: settings.batch_size]
    continuations(session.loaded, prompts[:1], settings)  # the first call pays one-time costs
    started = time.perf_counter()
    continuations(session.loaded, prompts, settings)
    per_prompt = (time.perf_counter() - started) / max(len(prompts), 1)
    windows = session.inputs.windows[: settings.ppl_batch_size]
    started = time.perf_counter()
    if windows:
        perplexity(session.loaded, windows, settings.ppl_batch_size)
    per_window = (time.perf_counter() - started) / max(len(windows), 1)
    evaluations = plan.counts["evaluations"]
    estimate = {
        "toxicity": evaluations * len(session.prompts.texts) * per_prompt,
        "perplexity": evaluations * len(session.inputs.windows) * per_window,
        "F1": evaluations * len(session.inputs.f1_items) * per_prompt,
    }
    estimate["total"] = sum(estimate.values())
    return estimate


def paper_preset(
    preset: PaperPreset = PaperPreset(), toxic_k: int = 128, tuning_free: dict | None = None
) -> list[Intervention]:
    """Ablate the top-K toxic neurons; patch each reducing group alone (with `preset.mode`); patch all four;
    the tuning-free edit (with the parameters in `tuning_free`, its defaults otherwise).

    With `Positions.AUTHORS`, each row follows the authors' protocol: the ablation zeroes the value vectors (every
    position, as zeroing the weights does) and the patch and edit rows act at the newest position. Other positions
    apply to every row.
    """
    from neuron_explorer.cache.schema import REDUCING_GROUPS

    authors = preset.positions is Positions.AUTHORS
    ablate_at = Positions.ALL if authors else preset.positions
    patch_at = Positions.NEWEST if authors else preset.positions
    patch_mode = preset.mode
    specs = [Intervention(modes.PRESET_ABLATION, (f"toxic:{toxic_k}",), ablate_at, label=f"ablate top-{toxic_k} toxic")]
    how = "" if patch_mode == modes.PRESET_PATCH_MODES[0] else f" ({patch_mode})"
    specs += [
        Intervention(patch_mode, (f"group:{group}",), patch_at, label=f"patch {group}{how}")
        for group in REDUCING_GROUPS
    ]
    specs.append(Intervention(patch_mode, ("group:reducing",), patch_at, label=f"patch all four ↓ groups{how}"))
    edit = Intervention(modes.PRESET_EDIT, (), patch_at, params=dict(tuning_free or {}))
    values = edit.values()
    specs.append(replace(edit, label=f"tuning-free edit (α={values['alpha']:g}, β={values['beta']:g})"))
    return specs


def format_runs_table(baseline: dict, runs: list[sidecar.PatchRun]) -> str:
    """Markdown: base, DPO and each run with toxicity, recovered fraction, perplexity, F1, probe change, neurons;
    "n/a" where a number could not be measured (a perplexity pass the intervention has none for, a zero DPO effect)."""
    lines = [
        "| setting | neurons | toxicity (± s.e.) | recovered | perplexity | F1 | probe proj. change |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    base, dpo = baseline["base"], baseline["dpo"]
    for name, metrics, neurons in (("base", base, 0), ("DPO", dpo, None)):
        change = metrics["probe_projection"] - base["probe_projection"]
        recovered = recovered_metrics(base, dpo, metrics)["recovered"]
        lines.append(
            f"| {name} | {'—' if neurons is None else neurons} | {metrics['toxicity']:.4f} ± "
            f"{metrics['toxicity_sem']:.4f} | {shown(recovered, '.1%')} | "
            f"{shown(metrics['perplexity'], '.2f')} | {metrics['f1']:.4f} | {change:+.3f} |"
        )
    for run in runs:
        m = run.metrics
        lines.append(
            f"| {run.settings.get('label', run.run_id)} | {m['neurons']:,} | {m['toxicity']:.4f} ± "
            f"{m['toxicity_sem']:.4f} | {shown(m['recovered'], '.1%')} | {shown(m['perplexity'], '.2f')} | "
            f"{m['f1']:.4f} | {m['probe_change']:+.3f} |"
        )
    return "\n".join(lines)


def shown(value: float, spec: str) -> str:
    """A metric as printed: "n/a" when it could not be measured (NaN)."""
    return format(value, spec) if math.isfinite(value) else "n/a"


__all__ = ["PatchSession", "paper_preset", "format_runs_table", "recovered_metrics", "shown", "replace"]
