"""Probe training, scorers, pairs, evaluation and stage caching, on synthetic data and a tiny random Llama."""

from __future__ import annotations

import importlib.util
import json
import re

import numpy as np
import pytest
import torch

from neuron_explorer.cli import main
from neuron_explorer.engine.alignment import probe_training as T
from neuron_explorer.engine.alignment.dpo import kept_step_folders, step_folder_name, step_of
from neuron_explorer.engine.alignment.pairs import (
    Candidates,
    generate_candidates,
    load_pairs,
    sample_openings,
    save_pairs,
    select_pairs,
    steering,
)
from neuron_explorer.engine.build import (
    StageRunner,
    StopBuild,
    content_hash,
    keep_series,
    training_candidates,
    training_prompts,
    validation_table,
    validation_toxicity,
)
from neuron_explorer.engine.measure.corpora import f1_items, load_corpus, perplexity_windows, token_f1
from neuron_explorer.engine.measure.evaluation import evaluate, evaluation_table, format_table
from neuron_explorer.engine.measure.probe import load_probe
from neuron_explorer.engine.measure.prompts import (
    RTP_VALIDATION,
    NearCopies,
    drop_near_copies,
    load_prompts,
    opening_seeds,
)
from neuron_explorer.engine.measure.scoring import get_scorer
from neuron_explorer.engine.model.generation import generate_continuations
from neuron_explorer.engine.model.hooks import forward_hooks
from neuron_explorer.engine.model.loading import load_model
from neuron_explorer.errors import UserError
from neuron_explorer.spec.settings import EvaluationSettings


class KeywordScorer:
    """A deterministic stand-in scorer: 1 when the text contains an insult word."""

    name = "keyword"

    def score(self, texts):
        return np.array([float(any(w in t.lower() for w in ("stupid", "idiot", "hate", "hell"))) for t in texts])

    def describe(self):
        return {"name": self.name}


@pytest.fixture(scope="module")
def tiny(tiny_models):
    return load_model(str(tiny_models["llama"]), device="cpu", dtype="float32")


# --- probe -----------------------------------------------------------------------------------------------------


def test_probe_separates_synthetic_data():
    rng = np.random.default_rng(0)
    direction = rng.normal(size=48)
    x = rng.normal(size=(400, 48)) * 3 + 10  # offset and scale: the unstandardized weight must still separate
    labels = (x @ direction > (x @ direction).mean()).astype(int)
    x += np.outer(labels * 2 - 1, direction) * 0.5
    fit = T.fit_probe(x, labels, seed=0)
    assert fit.metrics["heldout_accuracy"] >= 0.95
    assert fit.metrics["heldout_auc"] >= 0.99
    raw = (x @ fit.weight + fit.bias > 0).astype(int)  # the saved weight works in raw units
    assert (raw == labels).mean() >= 0.95
    cosine = fit.weight @ direction / np.linalg.norm(fit.weight) / np.linalg.norm(direction)
    assert cosine > 0.8


def test_self_labelled_candidates_leave_ambiguous_out():
    cands = [Candidates("p", "calm", 0.05, ["awful", "meh", "calm", "nasty"], [0.95, 0.5, 0.05, 0.85])]
    labeled = T.labeled_from_candidates(cands)  # band 0.3: 0.5 is ambiguous; "calm" appears twice
    assert labeled.texts == ["calm", "awful", "nasty"] and list(labeled.labels) == [0, 1, 1]
    assert len(T.labeled_from_candidates(cands, band=0).texts) == 4


def test_the_probes_held_out_texts_come_from_prompts_it_never_trained_on():
    """Four continuations per prompt, whose features share their prompt's random vector and whose label is the
    prompt's: a probe can memorize the prompts but learns nothing that carries to new ones. Split by text, siblings
    in training flatter it (AUC near 1); split by source prompt, it scores near chance: the honest figure."""
    rng = np.random.default_rng(1)
    n_prompts, siblings = 120, 4
    prompt_vectors, prompt_labels = rng.normal(size=(n_prompts, 200)), rng.integers(0, 2, n_prompts)
    groups = np.repeat(np.arange(n_prompts), siblings)
    x = prompt_vectors[groups] + 0.3 * rng.normal(size=(n_prompts * siblings, 200))
    labels = prompt_labels[groups]
    train, test = T.heldout_split(labels, groups, 0.2, seed=0)
    assert not set(groups[train]) & set(groups[test])  # no source prompt on both sides
    assert 0.15 < len(test) / len(labels) < 0.25 and set(labels[test]) == {0, 1}
    honest = T.fit_probe(x, labels, groups=groups, seed=0, C=1.0)
    flattered = T.fit_probe(x, labels, seed=0, C=1.0)
    assert flattered.metrics["heldout_auc"] > 0.95
    assert honest.metrics["heldout_auc"] < 0.75
    assert honest.metrics["heldout_split"].startswith("by source prompt")
    assert honest.metrics["n_heldout_prompts"] == len(set(groups[test]))
    cands = [Candidates(f"prompt {i}", f"calm {i}", 0.05, [f"awful {i}", f"nasty {i}"], [0.95, 0.85]) for i in range(3)]
    assert T.labeled_from_candidates(cands).groups.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_probe_save_and_load(tmp_path):
    fit = T.ProbeFit(weight=np.arange(1, 9, dtype=np.float32), bias=0.5, metrics={"heldout_auc": 0.9})
    path = T.save_probe(fit, tmp_path / "probe.safetensors", {"model": {"id": "x"}, "data": {"sha256": "abc"}})
    probe = load_probe(path, 8)
    np.testing.assert_allclose(probe.direction, fit.weight)
    meta = T.read_probe_metadata(path)
    assert meta["metrics"]["heldout_auc"] == 0.9 and meta["data"]["sha256"] == "abc"
    assert json.loads(path.with_suffix(".json").read_text())["model"] == {"id": "x"}


def test_pooled_features_mask_padding(tiny):
    short, long = "You are a", "The river runs through the village under an old stone bridge"
    alone = T.pooled_features(tiny, [short])
    batched = T.pooled_features(tiny, [short, long])
    np.testing.assert_allclose(alone[0], batched[0], atol=1e-4)
    assert not np.allclose(batched[0], batched[1])


def test_labeled_file_layouts_and_errors(tmp_path):
    good = tmp_path / "train.csv"
    good.write_text("id,comment_text,toxic\n1,you idiot,1\n2,nice day,0\n3,what the hell,1\n4,good morning,0\n")
    labeled = T.load_labeled(str(good))
    assert labeled.texts[0] == "you idiot" and list(labeled.labels) == [1, 0, 1, 0]
    no_label = tmp_path / "nolabel.csv"
    no_label.write_text("comment_text,severity\nyou idiot,high\n")
    with pytest.raises(UserError, match="no label column"):
        T.load_labeled(str(no_label))
    with pytest.raises(UserError, match="does not exist"):
        T.load_labeled(str(tmp_path / "missing.csv"))
    one_class = tmp_path / "one.jsonl"
    one_class.write_text('{"text": "a", "label": 0}\n{"text": "b", "label": 0}\n')
    with pytest.raises(UserError, match="both classes"):
        T.load_labeled(str(one_class))
    assert main(["train-probe", "--data", str(no_label), "-o", str(tmp_path / "p.safetensors")]) == 2


# --- scorers ---------------------------------------------------------------------------------------------------


def test_offline_scorer_scores_toxic_text_higher():
    scorer = get_scorer("profanity")
    scores = scorer.score(["you stupid idiot, shut the hell up", "the library opens at nine on weekdays"])
    assert scores[0] > 0.8 and scores[1] < 0.3
    assert scorer.describe()["package"] == "alt-profanity-check"


def test_check_scorer_is_a_word_list_independent_of_the_default_scorer():
    """The check scorer marks texts with a listed word (leetspeak included) 1 and others 0, whatever the SVM of
    the default scorer thinks; on texts the two disagree about, they give different answers."""
    check = get_scorer("wordlist")
    assert check.score(["you stupid b1tch", "what a lovely morning", "go to hell, you bastard"]).tolist() == [1, 0, 1]
    assert check.describe()["package"] == "better-profanity"
    default = get_scorer("profanity")
    polite_but_flagged = ["you are an utterly worthless and pathetic excuse for a human being"]
    assert check.score(polite_but_flagged)[0] == 0 and default.score(polite_but_flagged)[0] > 0.5


def test_missing_scorer_is_a_clear_error(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "detoxify" else real(name, *a))
    with pytest.raises(UserError, match="Detoxify scorer is not installed"):
        get_scorer("detoxify")
    with pytest.raises(UserError, match="unknown scorer"):
        get_scorer("perspective")
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello\n")
    assert main(["evaluate", "--scorer", "detoxify", "--prompts", str(prompts)]) == 2


# --- pairs -----------------------------------------------------------------------------------------------------


def test_select_pairs_applies_margin():
    cands = [
        Candidates("p0", "calm", 0.1, ["mean", "awful"], [0.3, 0.9]),
        Candidates("p1", "calm", 0.5, ["bad"], [0.6]),
        Candidates("p2", "calm", 0.0, [], [], ["steered insult"], [0.95]),
    ]
    pairs = select_pairs(cands, margin=0.3)
    assert [(p["prompt"], p["rejected"], p["rejected_method"]) for p in pairs] == [
        ("p0", "awful", "best-of-n"),
        ("p2", "steered insult", "steer"),
    ]
    assert select_pairs(cands, margin=0.3, sources=("samples",))[0]["rejected"] == "awful"
    assert all(p["chosen"] == "calm" for p in pairs)


def test_least_toxic_chosen_rule_keeps_prompts_whose_greedy_continuation_is_toxic():
    cands = [
        Candidates("p0", "calm", 0.1, ["clean", "awful"], [0.05, 0.9]),  # greedy within 0.1 of the cleanest
        Candidates("p1", "toxic greedy", 0.8, ["clean", "worse"], [0.1, 0.95]),
        Candidates("p2", "toxic greedy", 0.8, ["also toxic"], [0.85]),
    ]
    assert [p["prompt"] for p in select_pairs(cands, margin=0.3, chosen="greedy")] == ["p0"]
    pairs = select_pairs(cands, margin=0.3, chosen="least-toxic")
    assert [(p["prompt"], p["chosen"], p["rejected"], p["chosen_is_greedy"]) for p in pairs] == [
        ("p0", "calm", "awful", True),
        ("p1", "clean", "worse", False),
    ]
    with pytest.raises(UserError, match="chosen rule"):
        select_pairs(cands, chosen="best")


def test_openings_extend_their_seeds_in_the_models_words(tiny):
    seeds = ["The quick brown fox", 'She said, "']
    openings = sample_openings(tiny, seeds, per_seed=3, new_tokens=6, seed=0)
    assert openings == sample_openings(tiny, seeds, per_seed=3, new_tokens=6, seed=0), "not reproducible"
    assert len(openings) == len(set(openings)) and 0 < len(openings) <= 6
    for opening in openings:
        seed = next(s for s in seeds if opening.startswith(s))
        assert len(opening) > len(seed)


def test_candidates_and_pairs_round_trip(tiny, tmp_path):
    prompts = ["The quick brown fox", "What the hell is", "She walked to the market"]
    cands = generate_candidates(tiny, prompts, KeywordScorer(), n_samples=2, seed=0, new_tokens=6)
    assert len(cands) == 3 and all(len(c.samples) == 2 and len(c.sample_scores) == 2 for c in cands)
    again = generate_candidates(tiny, prompts, KeywordScorer(), n_samples=2, seed=0, new_tokens=6)
    assert [c.samples for c in cands] == [c.samples for c in again], "sampling is not reproducible"
    pairs = [{"prompt": "a", "chosen": "b", "rejected": "c", "chosen_score": 0, "rejected_score": 1}]
    save_pairs(pairs, tmp_path / "pairs.jsonl", {"scorer": "keyword"})
    assert load_pairs(tmp_path / "pairs.jsonl")[0]["rejected"] == "c"
    assert json.loads((tmp_path / "pairs.jsonl.provenance.json").read_text())["scorer"] == "keyword"
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a", "chosen": "b"}\n')
    with pytest.raises(UserError, match="missing rejected"):
        load_pairs(tmp_path / "bad.jsonl")


def test_steering_adds_along_probe_and_comes_off(tiny):
    ids = tiny.tokenizer("The river runs", return_tensors="pt")["input_ids"]
    last = tiny.arch.layers(tiny.model)[-1]
    seen = []
    with forward_hooks([(last, lambda m, i, o: seen.append((o[0] if isinstance(o, tuple) else o).clone()))]):
        with torch.no_grad():
            tiny.model(input_ids=ids)
            direction = np.random.default_rng(0).normal(size=tiny.d_model).astype(np.float32)
            with steering(tiny, direction, 0.5) as step:
                tiny.model(input_ids=ids)
            tiny.model(input_ids=ids)
    # the recording hook was registered first, so it sees the output before the steering hook adds to it:
    # compare the logits instead
    with torch.no_grad():
        plain = tiny.model(input_ids=ids).logits
        with steering(tiny, direction, 0.5):
            steered = tiny.model(input_ids=ids).logits
        after = tiny.model(input_ids=ids).logits
    assert step > 0
    assert not torch.allclose(plain, steered)
    assert torch.equal(plain, after), "the steering hook stayed on"


# --- evaluation --------------------------------------------------------------------------------------------------


def test_evaluation_counts_and_intervention(tiny):
    corpus = load_corpus("builtin")
    settings = EvaluationSettings(ppl_window=32, ppl_windows=4, f1_items=5, new_tokens=5)
    prompts = ["The quick brown fox", "What the hell is", "She walked"]
    result = evaluate(tiny, prompts, KeywordScorer(), corpus=corpus, settings=settings)
    assert result.n_prompts == 3 and len(result.generations) == 3
    assert result.n_tokens == 4 * 31
    assert result.n_f1 == 5 and 0 <= result.f1 <= 1
    vocab = len(tiny.tokenizer)
    assert 1 < result.perplexity < 10 * vocab  # a random model: perplexity of the order of the vocabulary
    # Under an intervention (here: zero the last MLP's output) the same call measures the patched model.
    mlp = tiny.arch.out_proj(tiny.model, len(tiny.arch.layers(tiny.model)) - 1)
    with forward_hooks([(mlp, lambda m, i, o: torch.zeros_like(o))]):
        patched = evaluate(tiny, prompts, KeywordScorer(), corpus=corpus, settings=settings)
    assert patched.perplexity != result.perplexity
    again = evaluate(tiny, prompts, KeywordScorer(), corpus=corpus, settings=settings)
    assert again.perplexity == pytest.approx(result.perplexity, rel=1e-6)
    checked = evaluate(
        tiny, prompts, KeywordScorer(), corpus=corpus, settings=settings, check_scorer=get_scorer("wordlist")
    )
    expected = get_scorer("wordlist").score(checked.generations)  # the check scores the same continuations
    assert checked.check_scores == expected.tolist() and checked.check_toxicity == pytest.approx(expected.mean())
    assert "toxicity by wordlist" in format_table({"base": checked})
    table = evaluation_table({"base": result, "patched": patched})
    assert table["columns"]["setting"] == ["base", "patched"] and table["columns"]["n_tokens"] == [124, 124]
    assert "| base |" in format_table({"base": result, "patched": patched})


class InsultCounter:
    """A stand-in check scorer with a known answer: the number of insult words, capped at 1."""

    name = "insults"

    def score(self, texts):
        return np.array([min(1.0, float(sum(t.lower().count(w) for w in ("stupid", "idiot")))) for t in texts])


def test_validation_toxicity_scores_the_continuations_by_both_scorers(tiny, monkeypatch):
    """The build's RTP validation figure: the continuations are the greedy ones (generated independently here) and
    each scorer's mean and standard error are over them; the table gives DPO's ratio to the base."""
    prompts = ["You are a", "What the hell", "The river", "Shut up and"]
    continuations = generate_continuations(tiny, prompts)
    fixed = ["stupid idiot", "fine", "idiot", "hell no"]  # a known answer: replace what the model wrote
    monkeypatch.setattr(
        "neuron_explorer.engine.measure.evaluation.generate_continuations",
        lambda loaded, chunk, **kw: fixed[: len(chunk)],
    )
    result = validation_toxicity(tiny, prompts, KeywordScorer(), InsultCounter(), EvaluationSettings())
    assert result["generations"] == fixed and result["n_prompts"] == 4
    assert result["scores"] == [1.0, 0.0, 1.0, 1.0] and result["toxicity"] == 0.75
    assert result["check_scores"] == [1.0, 0.0, 1.0, 0.0] and result["check_toxicity"] == 0.5
    assert result["check_toxicity_sem"] == pytest.approx(np.std([1, 0, 1, 0], ddof=1) / 2)
    monkeypatch.undo()
    assert (
        validation_toxicity(tiny, prompts, KeywordScorer(), None, EvaluationSettings())["generations"] == continuations
    )
    table = validation_table({"base": result, "dpo": {**result, "toxicity": 0.3, "check_toxicity": 0.1}})
    assert "dpo: RTP validation toxicity × 0.40 of base (check scorer × 0.20)" in table


def test_build_summary_reports_rtp_validation_beside_held_out():
    """The closing lines of `build`: held-out and RTP validation ratios from hand-built figures."""
    from types import SimpleNamespace

    from neuron_explorer.commands.build import summary

    held = {"toxicity": 0.4, "check_toxicity": 0.2, "n_prompts": 320, "perplexity": 16.0, "n_tokens": 6120}
    evaluation = {
        "base": held,
        "dpo": {**held, "toxicity": 0.1, "check_toxicity": 0.05, "perplexity": 16.8},
        "rtp_validation": {
            "base": {"toxicity": 0.3, "check_toxicity": 0.2, "n_prompts": 399},
            "dpo": {"toxicity": 0.12, "check_toxicity": 0.05, "n_prompts": 399},
        },
    }
    text = summary(
        SimpleNamespace(outcomes=[], evaluation=evaluation, output="x.h5"),
        SimpleNamespace(check_scorer="wordlist", until=None),
    )
    assert "held-out toxicity base 0.400 -> DPO 0.100 (0.25x, 320 prompts)" in text
    assert (
        "RTP validation toxicity base 0.300 -> DPO 0.120 (0.40x, 399 prompts); by wordlist 0.200 -> 0.050 (0.25x)"
    ) in text


def test_corpus_windows_and_f1(tiny):
    corpus = load_corpus("builtin")
    assert corpus.source == "builtin:pydoc_data.topics" and len(corpus.text) > 100_000
    windows = perplexity_windows(tiny.tokenizer, corpus, window=64, max_windows=10)
    assert len(windows) == 10 and all(len(w) == 64 for w in windows)
    items = f1_items(tiny.tokenizer, corpus, n=7)
    assert len(items) == 7
    assert token_f1("the cat sat", "the cat sat") == 1.0
    assert token_f1("a b", "c d") == 0.0
    assert token_f1("The cat", "the cat sat down") == pytest.approx(2 / 3)


@pytest.fixture(scope="module")
def tiny_with_bos(tiny_models, tmp_path_factory):
    """The tiny Llama with a tokenizer that starts every text with a BOS, as Llama-3's and Gemma's do."""
    import shutil

    from tokenizers import processors

    folder = tmp_path_factory.mktemp("bos") / "llama"
    shutil.copytree(tiny_models["llama"], folder)
    loaded = load_model(str(folder), device="cpu", dtype="float32")
    tokenizer = loaded.tokenizer
    bos = tokenizer.bos_token_id
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{tokenizer.bos_token} $A", special_tokens=[(tokenizer.bos_token, bos)]
    )
    tokenizer.save_pretrained(folder)
    loaded = load_model(str(folder), device="cpu", dtype="float32")
    assert loaded.tokenizer("You are")["input_ids"][0] == bos  # the saved tokenizer adds it
    assert loaded.tokenizer("You are", add_special_tokens=False)["input_ids"][0] != bos
    return loaded


def test_f1_continues_the_whole_prompt_and_perplexity_windows_start_with_bos(tiny_with_bos):
    """A BOS-adding tokenizer: F1's continuation is the greedy continuation of BOS + all the prompt's tokens (by an
    uncached loop here), not of a prompt truncated by one; perplexity is Hugging Face's own loss on windows that start
    with the BOS."""
    from neuron_explorer.engine.measure.evaluation import f1_score, perplexity

    loaded = tiny_with_bos
    model, tokenizer, bos = loaded.model, loaded.tokenizer, loaded.tokenizer.bos_token_id
    corpus = load_corpus()
    settings = EvaluationSettings(new_tokens=4, max_prompt_tokens=12, batch_size=2)
    items = f1_items(tokenizer, corpus, n=3, prompt_tokens=12, gold_tokens=4)
    _, generations = f1_score(loaded, items, settings)
    for (prompt, _), generated in zip(items, generations):
        ids = [bos] + tokenizer(prompt, add_special_tokens=False)["input_ids"]
        assert len(ids) == 13
        with torch.no_grad():
            for _ in range(4):
                logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
                logits[[tokenizer.eos_token_id, tokenizer.pad_token_id]] = float("-inf")
                ids.append(int(logits.argmax()))
        assert generated == tokenizer.decode(ids[13:], skip_special_tokens=True)
    windows = perplexity_windows(tokenizer, corpus, window=16, max_windows=3)
    text = tokenizer(corpus.text, add_special_tokens=False)["input_ids"]
    assert all(len(w) == 16 and w[0] == bos for w in windows) and windows[0][1:] == text[:15]
    ids = torch.tensor(windows)
    with torch.no_grad():
        expected = float(torch.exp(model(input_ids=ids, labels=ids).loss))
    measured, n_tokens = perplexity(loaded, windows)
    assert measured == pytest.approx(expected, rel=1e-5) and n_tokens == 3 * 15


def test_bad_corpus_and_prompt_inputs(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_corpus(str(tmp_path / "none.txt"))
    (tmp_path / "short.txt").write_text("too short")
    with pytest.raises(UserError, match="fewer than 100 words"):
        load_corpus(str(tmp_path / "short.txt"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["make-pairs", "--prompts", str(empty), "-o", str(tmp_path / "p.jsonl")]) == 2
    assert main(["evaluate", "--prompts", str(empty)]) == 2


def test_builtin_heldout_prompts_share_no_template_with_training_prompts():
    """Checked on the composed texts, not on the template lists: no held-out prompt starts with the first five
    words or ends with the last three words of any training (pairs) prompt."""
    pairs, heldout = load_prompts("builtin:pairs").texts, load_prompts("builtin:heldout").texts
    assert len(pairs) >= 400 and len(heldout) >= 250
    assert len(set(pairs)) == len(pairs) and len(set(heldout)) == len(heldout)

    def head(text):
        return tuple(text.lower().split()[:5])

    def tail(text):
        return tuple(text.lower().split()[-3:])

    shared_heads = {head(t) for t in heldout} & {head(t) for t in pairs}
    shared_tails = {tail(t) for t in heldout} & {tail(t) for t in pairs}
    assert not shared_heads and not shared_tails, (sorted(shared_heads)[:3], sorted(shared_tails)[:3])
    assert load_prompts("builtin").texts == pairs + heldout
    validation = load_prompts("builtin:validation").texts  # for tuning: training templates, unused combinations
    assert len(validation) >= 100 and not set(validation) & (set(pairs) | set(heldout))
    assert {head(t) for t in validation} <= {head(t) for t in pairs}


def test_near_copies_by_head_tail_and_common_run():
    """A hand-built case for each rule, quote style and case ignored; texts that share less are not near copies."""
    near = NearCopies(
        [
            "Joffery is still a jerk, Ned is still",
            "The man then confronted Rodr\u00edguez with a pistol",
            "\u201cI listened to Jay\u2019s shit, that",
        ]
    )
    assert near("JOFFERY is still a JERK and everyone knows it")  # first five words
    assert near("In the books, at least, Ned is still")  # last three words
    assert near("at dawn she confronted Rodr\u00edguez with a knife")  # 25 characters in common
    assert near("\"I listened to Jay's shit all day")  # first five words, straight quotes
    assert not near("Joffery is a jerk")
    assert not near("At dawn she confronted Rodr\u00edguez in the hall")
    kept, dropped = drop_near_copies(["Ned is still", "Ned is still here today"], ["Ned is still"])
    assert (kept, dropped) == (["Ned is still here today"], ["Ned is still"])


def _near_copy_found_by_search(text: str, references: list[str]) -> bool:
    """Independent of prompts.NearCopies: words by str.split once punctuation is blanked, common runs by substring
    search of each 25-character window in all references joined."""

    def plain(t):
        return " ".join(t.replace("\u201c", '"').replace("\u201d", '"').replace("\u2019", "'").lower().split())

    def words(t):
        return re.sub(r"[^a-z0-9']+", " ", plain(t)).split()

    heads, tails = {tuple(words(r)[:5]) for r in references}, {tuple(words(r)[-3:]) for r in references}
    joined, x = "\n".join(plain(r) for r in references), plain(text)
    return (
        tuple(words(text)[:5]) in heads
        or tuple(words(text)[-3:]) in tails
        or any(x[i : i + 25] in joined for i in range(len(x) - 24))
    )


def test_no_validation_prompt_or_near_copy_enters_training():
    """The candidates' prompts (hence the probe's data, the pairs and DPO) are the build's training prompts less near
    copies of the 399 RTP validation prompts: planted copies are left out, and no kept prompt near-copies a validation
    prompt by an independent search."""
    validation = load_prompts(RTP_VALIDATION).texts
    assert len(validation) == 399 and len(set(validation)) == 399
    planted = [
        validation[3] + " and then",
        "Well, " + validation[10],
        validation[20].upper(),
        "so " + validation[30][-40:],
    ]
    texts = load_prompts("builtin:pairs").texts + opening_seeds("pairs") + planted
    kept, dropped = training_prompts(texts, validation)
    assert set(planted) <= set(dropped)
    assert [text for text in kept if _near_copy_found_by_search(text, validation)] == []
    assert all(_near_copy_found_by_search(text, validation) for text in planted)
    assert len(kept) >= 500


def test_the_probe_and_the_pairs_read_only_candidates_that_may_train(tmp_path):
    """The candidates stage generates for every prompt (generation trains nothing); the probe and pairs stages read
    them through training_candidates, which leaves out the near copies of validation prompts."""
    from neuron_explorer.engine.alignment.pairs import Candidates, save_candidates

    validation = load_prompts(RTP_VALIDATION).texts
    prompts = ["The river runs", validation[5] + " again", "Shut up, you", validation[7].lower()]
    save_candidates([Candidates(prompt=p, greedy=" x", greedy_score=0.1) for p in prompts], tmp_path / "c.jsonl", {})
    kept = [c.prompt for c in training_candidates(tmp_path / "c.jsonl", validation)]
    assert kept == ["The river runs", "Shut up, you"]


# --- stage caching ---------------------------------------------------------------------------------------------


def test_stage_skipped_when_inputs_unchanged_and_rerun_when_changed(tmp_path):
    calls = []
    out = tmp_path / "work" / "out.txt"

    def body(value):
        def run():
            calls.append(value)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(f"result {value}")
            return {"value": value}

        return run

    runner = StageRunner(tmp_path / "work")
    first = runner.run("stage", {"x": 1}, {"out": out}, body(1))
    second = StageRunner(tmp_path / "work").run("stage", {"x": 1}, {"out": out}, body(1))
    assert not first.skipped and second.skipped and calls == [1]
    assert second.outputs == first.outputs and second.summary["value"] == 1
    third = StageRunner(tmp_path / "work").run("stage", {"x": 2}, {"out": out}, body(2))
    assert not third.skipped and calls == [1, 2]
    out.write_text("tampered")  # an output changed behind the manifest's back: rerun
    fourth = StageRunner(tmp_path / "work").run("stage", {"x": 2}, {"out": out}, body(2))
    assert not fourth.skipped and calls == [1, 2, 2]
    forced = StageRunner(tmp_path / "work", force={"stage"})
    assert not forced.run("stage", {"x": 2}, {"out": out}, body(2)).skipped


def test_until_stops_after_the_named_stage(tmp_path):
    ran = []
    runner = StageRunner(tmp_path, until="second")

    def body(name):
        def run():
            ran.append(name)
            (tmp_path / name).write_text(name)

        return run

    runner.run("first", {}, {"out": tmp_path / "first"}, body("first"))
    with pytest.raises(StopBuild) as stopped:
        runner.run("second", {}, {"out": tmp_path / "second"}, body("second"))
    assert ran == ["first", "second"] and [o.name for o in stopped.value.outcomes] == ["first", "second"]
    assert runner.manifest_path("second").exists(), "the stage it stops after is complete and cached"


def test_failed_stage_is_not_marked_done(tmp_path):
    runner = StageRunner(tmp_path)

    def boom():
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        runner.run("stage", {"x": 1}, {"out": tmp_path / "o"}, boom)
    assert not runner.manifest_path("stage").exists()


def test_content_hash_of_folders(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "a.bin").write_bytes(b"1")
    first = content_hash(tmp_path / "m")
    (tmp_path / "m" / "a.bin").write_bytes(b"2")
    assert content_hash(tmp_path / "m") != first
    assert content_hash(tmp_path / "missing") is None


@pytest.mark.parametrize(
    "kept,expected", [(80, [20, 40, 60]), (50, [10, 20, 40]), (20, [10]), (10, [])], ids=["80", "50", "20", "10"]
)
def test_the_builds_dynamics_keep_three_checkpoints_spread_before_the_kept_step(tmp_path, kept, expected):
    for step in range(10, 90, 10):
        (tmp_path / step_folder_name(step)).mkdir()
        (tmp_path / step_folder_name(step) / "model.safetensors").write_bytes(b"w")
    (tmp_path / "notes").mkdir()  # not a step: left alone
    assert keep_series(tmp_path, kept) == expected
    assert [step_of(folder) for folder in kept_step_folders(tmp_path)] == expected
    assert (tmp_path / "notes").is_dir()


def test_build_rejects_unknown_stage():
    assert main(["build", "--force", "nonsense"]) == 2
