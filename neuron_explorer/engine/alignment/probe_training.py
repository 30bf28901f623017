"""Training the linear toxicity probe (METHOD §1, Lee et al.).

Features: the residual stream after the model's last block (before the final norm: the space the MLP value vectors
write into), mean-pooled over the real tokens of each text (padding masked). Classifier: logistic regression
(scikit-learn), features standardized for the fit and the weights mapped back to residual-stream units, so the
saved `weight` is a direction in the residual stream.

Labelled texts come from
- a local file or hub dataset in the Jigsaw layout (`comment_text` + `toxic` columns; other names with
  --text-column/--label-column; labels ≥ 0.5 count as toxic), or
- offline: texts labelled by the offline scorer, e.g. the base model's own sampled continuations of the
  provocative prompts (the `candidates` that pair making also uses).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from neuron_explorer.cache.atomic import atomic_path, write_sorted_json_atomically
from neuron_explorer.cache.provenance import sha256_texts
from neuron_explorer.engine.defaults import LABEL_BAND, PROBE_C
from neuron_explorer.engine.model.hooks import forward_hooks
from neuron_explorer.errors import UserError

TEXT_COLUMNS = ("comment_text", "text", "prompt")
LABEL_COLUMNS = ("toxic", "label", "toxicity", "labels")


@dataclass(frozen=True)
class LabeledTexts:
    texts: list[str]
    labels: np.ndarray  # (N,) int {0, 1}
    source: str
    sha256: str
    groups: np.ndarray | None = None  # (N,) the source prompt of each text (continuations of one prompt are siblings)

    def provenance(self) -> dict:
        return {"source": self.source, "sha256": self.sha256, "n": len(self.texts), "n_toxic": int(self.labels.sum())}


def _finish(
    texts: list[str], labels, source: str, threshold: float = 0.5, groups: list[int] | None = None
) -> LabeledTexts:
    keep = [i for i, t in enumerate(texts) if isinstance(t, str) and t.strip()]
    texts = [texts[i] for i in keep]
    values = np.asarray([labels[i] for i in keep], dtype=np.float64)
    if not texts:
        raise UserError(f"{source} holds no labelled texts")
    if not np.isfinite(values).all():
        raise UserError(f"{source} has missing or non-numeric labels: labels must be 0/1 or a score in [0, 1]")
    binary = (values >= threshold).astype(np.int64)
    if binary.min() == binary.max():
        raise UserError(
            f"{source} has only {'toxic' if binary[0] else 'non-toxic'} texts: the probe needs both classes"
        )
    digest = sha256_texts([f"{int(b)}\t{t}" for t, b in zip(texts, binary)])
    return LabeledTexts(
        texts=texts,
        labels=binary,
        source=source,
        sha256=digest,
        groups=None if groups is None else np.asarray([groups[i] for i in keep], dtype=np.int64),
    )


def load_labeled(
    source: str,
    *,
    text_column: str | None = None,
    label_column: str | None = None,
    max_rows: int | None = None,
    seed: int = 0,
) -> LabeledTexts:
    """A labelled file (.csv, .parquet, .jsonl) or `hub:NAME[:SPLIT]`; Jigsaw's train.csv works as is.
    With max_rows, a seeded random subset is taken."""
    import polars as pl

    if source.startswith("hub:"):
        name, _, split = source[4:].partition(":")
        try:
            import datasets

            frame = datasets.load_dataset(name, split=split or "train").to_polars()
        except Exception as error:
            raise UserError(
                f"cannot load hub dataset '{name}' ({type(error).__name__}): the hub may be unreachable "
                f"or the data set needs a manual download (Jigsaw does); pass a local file"
            ) from error
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise UserError(
                f"labelled file {path} does not exist: pass a .csv/.parquet/.jsonl with text and label "
                f"columns (Jigsaw layout: comment_text, toxic)"
            )
        suffix = path.suffix.lower()
        try:
            if suffix == ".csv":
                frame = pl.read_csv(path, infer_schema_length=10000)
            elif suffix == ".parquet":
                frame = pl.read_parquet(path)
            elif suffix in {".jsonl", ".json"}:
                frame = pl.read_ndjson(path)
            else:
                raise UserError(f"{path}: unknown labelled-file type; use .csv, .parquet or .jsonl")
        except UserError:
            raise
        except Exception as error:
            raise UserError(f"{path} is not a readable {suffix[1:]} file: {str(error).splitlines()[0]}") from error
    if frame.height == 0:
        raise UserError(f"{source} is empty: give labelled texts")
    text_name = _column(frame, text_column, TEXT_COLUMNS, source, "text", "--text-column")
    label_name = _column(frame, label_column, LABEL_COLUMNS, source, "label", "--label-column")
    frame = frame.select(text_name, label_name).drop_nulls()
    if max_rows is not None and frame.height > max_rows:
        frame = frame.sample(n=max_rows, seed=seed, shuffle=True)
    try:
        labels = frame[label_name].cast(pl.Float64).to_list()
    except Exception as error:
        raise UserError(f"{source}: label column '{label_name}' is not numeric (0/1 or a score)") from error
    return _finish([str(t) for t in frame[text_name].to_list()], labels, source)


def _column(frame, wanted, candidates, source, what, option) -> str:
    if wanted:
        if wanted not in frame.columns:
            raise UserError(f"{source} has no column '{wanted}' (columns: {', '.join(frame.columns)})")
        return wanted
    for name in candidates:
        if name in frame.columns:
            return name
    raise UserError(
        f"{source} has no {what} column ({' or '.join(candidates)}; columns: {', '.join(frame.columns)}): "
        f"name it with {option}"
    )


def label_rule(scorer: str, threshold: float, band: float) -> str:
    """How `labeled_from_candidates` labelled its texts, for the probe's metadata."""
    return f"{scorer} score >= {threshold + band:g} toxic, <= {threshold - band:g} non-toxic, ambiguous left out"


def labeled_from_candidates(
    candidates, threshold: float = 0.5, source: str = "candidates", band: float = LABEL_BAND
) -> LabeledTexts:
    """Greedy and sampled continuations labelled by their scorer score: toxic when score ≥ threshold + band,
    non-toxic when score ≤ threshold − band; the ambiguous texts in between are left out (the scorer's labels
    there are close to coin flips; Jigsaw's labels are likewise majority votes of raters). band=0 keeps all.
    Each text keeps its source prompt (`groups`), so that the probe's held-out split keeps siblings together."""
    texts, scores, groups = [], [], []
    seen = set()
    prompt_ids: dict[str, int] = {}
    for cand in candidates:
        for text, score in [(cand.greedy, cand.greedy_score), *zip(cand.samples, cand.sample_scores)]:
            if text in seen:  # greedy and samples can coincide: keep the first
                continue
            seen.add(text)
            if band and threshold - band < score < threshold + band:
                continue
            texts.append(text)
            scores.append(score)
            groups.append(prompt_ids.setdefault(cand.prompt, len(prompt_ids)))
    return _finish(texts, scores, source, threshold, groups)


@torch.inference_mode()
def pooled_features(
    loaded, texts: list[str], *, batch_size: int = 32, max_tokens: int = 64, progress=None
) -> np.ndarray:
    """(N, d_model) last-block residual stream, mean over real tokens (padding masked)."""
    tokenizer, model = loaded.tokenizer, loaded.model
    last = loaded.arch.layers(model)[-1]
    captured = {}

    def hook(module, inputs, output):
        captured["h"] = output[0] if isinstance(output, tuple) else output

    out = []
    with forward_hooks([(last, hook)]):
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            batch = tokenizer(
                chunk,
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=max_tokens,
                add_special_tokens=False,
            )
            ids = batch["input_ids"].to(loaded.device)
            mask = batch["attention_mask"].to(loaded.device)
            positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
            model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False, logits_to_keep=1)
            hidden = captured["h"].float()
            weights = mask.unsqueeze(-1).float()
            out.append(((hidden * weights).sum(1) / weights.sum(1).clamp(min=1)).cpu().numpy())
            if progress:
                progress(min(start + batch_size, len(texts)), len(texts))
    return np.concatenate(out, axis=0)


@dataclass
class ProbeFit:
    weight: np.ndarray  # (d,) in residual-stream units
    bias: float
    metrics: dict


def heldout_split(
    labels: np.ndarray, groups: np.ndarray | None, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) indices, stratified by label. With `groups` (each text's source prompt) every group falls
    on one side: a held-out continuation whose siblings were trained on would flatter the probe."""
    from sklearn.model_selection import StratifiedGroupKFold, train_test_split

    every = np.arange(len(labels))
    if groups is None:
        train, test = train_test_split(every, test_size=test_fraction, random_state=seed, stratify=labels)
        return np.sort(train), np.sort(test)
    folds = StratifiedGroupKFold(n_splits=max(2, round(1 / test_fraction)), shuffle=True, random_state=seed)
    train, test = next(folds.split(every, labels, groups))
    if min(np.bincount(labels[test], minlength=2)) == 0 or min(np.bincount(labels[train], minlength=2)) == 0:
        raise UserError(
            f"too few source prompts ({len(np.unique(groups))}) to hold out whole prompts with both "
            f"classes on each side: give more prompts"
        )
    return train, test


def fit_probe(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    groups: np.ndarray | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    C: float = PROBE_C,
) -> ProbeFit:
    """Logistic regression (L2, inverse strength C on standardized features) with a stratified held-out split (by
    source prompt when `groups` says which prompt each text continues); reports held-out accuracy and AUC. The strong
    default regularization (C = 0.01) suits a few hundred to a few thousand texts in 500-5,000 dimensions."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, roc_auc_score

    labels = np.asarray(labels).astype(np.int64)
    if len(labels) < 10 or min(np.bincount(labels, minlength=2)) < 2:
        raise UserError(
            f"too few labelled texts to train a probe ({len(labels)}, "
            f"{int(labels.sum())} toxic): give at least 10 with both classes"
        )
    train, test = heldout_split(labels, groups, test_fraction, seed)
    x_train, x_test, y_train, y_test = features[train], features[test], labels[train], labels[test]
    mean, scale = x_train.mean(0), x_train.std(0) + 1e-6
    classifier = LogisticRegression(C=C, max_iter=5000, class_weight="balanced")
    classifier.fit((x_train - mean) / scale, y_train)

    def prob(x):
        return classifier.predict_proba((x - mean) / scale)[:, 1]

    p_test, p_train = prob(x_test), prob(x_train)
    weight = (classifier.coef_[0] / scale).astype(np.float32)
    bias = float(classifier.intercept_[0] - (classifier.coef_[0] * mean / scale).sum())
    metrics = {
        "heldout_accuracy": float(accuracy_score(y_test, p_test >= 0.5)),
        "heldout_auc": float(roc_auc_score(y_test, p_test)),
        "train_accuracy": float(accuracy_score(y_train, p_train >= 0.5)),
        "n_train": int(len(y_train)),
        "n_heldout": int(len(y_test)),
        "n_toxic": int(labels.sum()),
        "n_total": int(len(labels)),
        "heldout_fraction": test_fraction,
        "C": C,
        "seed": seed,
        "heldout_split": "by text" if groups is None else "by source prompt (a prompt's continuations on one side)",
    }
    if groups is not None:
        metrics["n_heldout_prompts"] = int(len(np.unique(groups[test])))
    return ProbeFit(weight=weight, bias=bias, metrics=metrics)


def save_probe(fit: ProbeFit, path: str | Path, metadata: dict) -> Path:
    """`weight` (d,) and `bias` (1,) in a safetensors file, metadata (JSON strings) in its header and a sidecar."""
    from safetensors.torch import save_file

    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix != ".safetensors":
        raise UserError(f"save the probe as .safetensors, not {path.suffix}")
    meta = {
        **metadata,
        "metrics": fit.metrics,
        "layer": metadata.get("layer", "last"),
        "format": "neuron-explorer probe v1",
    }
    header = {k: json.dumps(v, default=str) for k, v in meta.items()}
    with atomic_path(path, advice="choose another -o") as temporary:
        save_file(
            {"weight": torch.from_numpy(fit.weight), "bias": torch.tensor([fit.bias], dtype=torch.float32)},
            str(temporary),
            metadata=header,
        )
    write_sorted_json_atomically(path.with_suffix(".json"), meta)
    return path


def read_probe_metadata(path: str | Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        header = handle.metadata() or {}
    return {k: json.loads(v) for k, v in header.items()}
