"""One neuron: every metric in both models, the tokens its value vector writes, its activations over prompts."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
from rich.table import Table
from rich.text import Text
from textual import getters, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Header, LoadingIndicator, Static

from neuron_explorer.cache.annotations import PatchRun, list_runs
from neuron_explorer.cache.reader import TOKEN_TABLE_SCHEMA, neuron_id

from ..formatting import short_text, signed
from ..messages import DetailLoaded, MarksChanged
from ..state import Store, is_reducing
from ..widgets.footer import KeyFooter
from ..widgets.plots import ActivationHistogram, step_label
from .dialogs import ShowsWorkerErrors

if TYPE_CHECKING:
    from ..app import ExplorerApp

TOP_PROMPTS = 8
NEIGHBOURS = Binding.Group("step", compact=True)  # `[` previous and `]` next neuron: one footer entry

# (label, base-model key, DPO-model key, description)
PAIRED_METRICS = (
    ("cos(v, w)", "cos_pre", "cos_dpo", "cosine of the value vector with the probe"),
    ("p = v·ŵ", "p_pre", "p_dpo", "projection of the value vector on the probe"),
    ("ā", "act_pre", "act_dpo", "mean activation"),
    ("P = ā·p", "tox_pre", "tox_dpo", "what it writes along the probe"),
)


def metrics_table(record: dict) -> Table:
    table = Table(box=None, padding=(0, 1), header_style="bold")
    table.add_column("metric", no_wrap=True)
    table.add_column("base", justify="right", no_wrap=True)
    table.add_column("DPO", justify="right", no_wrap=True)
    table.add_column("base − DPO", justify="right", no_wrap=True)
    for label, pre, dpo, _ in PAIRED_METRICS:
        if pre in record and dpo in record:
            # one format for every number of the table (they span decades: P is often 1e-5 where cos is 0.1)
            table.add_row(label, *(f"{value:+.3e}" for value in (record[pre], record[dpo], record[pre] - record[dpo])))
    return table


def headline(record: dict) -> Text:
    group = record["group"]
    text = Text()
    text.append(neuron_id(record["layer"], record["neuron"]), style="bold")
    text.append("  group ").append(group, style="bold green" if is_reducing(group) else "bold red")
    text.append("  cluster ").append("none" if record["cluster"] is None else str(record["cluster"]), style="bold")
    text.append("\nΔ = P_pre − P_dpo ").append(
        signed(record["contribution"]), style="green" if record["contribution"] > 0 else "red"
    )
    text.append("   δ = ā_pre − ā_dpo ").append(signed(record["act_shift"]))
    if "value_cos" in record:
        text.append(f"\ncos(v_pre, v_dpo) {record['value_cos']:.5f}: how much tuning turned the value vector")
    return text


SPARK = "▁▂▃▄▅▆▇█"


def trajectory_text(steps: list[str], values) -> Text:
    """A neuron's Δ across a checkpoint series: a sparkline from 0 (▁) to the largest |Δ| (█), then each step's Δ."""
    top = max((abs(float(value)) for value in values), default=0.0)
    text = Text()
    for value in values:
        level = round(abs(float(value)) / top * (len(SPARK) - 1)) if top > 0 else 0
        text.append(SPARK[level], style="green" if value > 0 else "red" if value < 0 else "")
    for step, value in zip(steps, values, strict=True):
        text.append(f"  {step_label(step)} ", style="bold").append(signed(float(value)))
    return text


def tokens_table(tokens: pl.DataFrame, lens_rule: dict | None = None) -> Table | Text:
    if tokens.is_empty() and lens_rule and lens_rule.get("rule") == "top":
        return Text(
            f"not computed for this neuron: compute took those of {lens_rule['by']} only; t computes them in "
            f"the lab's model worker (as `neuron-explorer lab FILE --tokens L:N` does), compute --lens all takes "
            f"every neuron",
            style="dim",
        )
    if tokens.is_empty():
        return Text("this cache stores no token tables", style="dim")
    table = Table(box=None, padding=(0, 1), header_style="bold")
    columns = [(model, direction) for direction in ("top", "bottom") for model in ("pre", "dpo")]
    for model, direction in columns:
        table.add_column(f"{direction} {'base' if model == 'pre' else 'DPO'}", no_wrap=True, max_width=18)
    lists = {
        key: tokens.filter((pl.col("model") == key[0]) & (pl.col("direction") == key[1])).sort("rank")
        for key in columns
    }
    depth = max(len(frame) for frame in lists.values())
    for rank in range(depth):
        cells = []
        for key in columns:
            frame = lists[key]
            cells.append(
                Text(f"{short_text(repr(frame['token'][rank])[1:-1], 10)} {frame['score'][rank]:+.2f}")
                if rank < len(frame)
                else ""
            )
        table.add_row(*cells)
    return table


def most_shifted(prompts: pl.DataFrame) -> pl.DataFrame:
    """The prompts on which the neuron's ā moved most (|δ|), largest first: the table's and the examples' rows."""
    if "act_shift" not in prompts.columns:
        return prompts.clear()
    return prompts.sort(pl.col("act_shift").abs(), descending=True).head(TOP_PROMPTS)


def answered_tokens(answer: dict) -> pl.DataFrame:
    """An examples answer's value-vector tokens in `CacheReader.top_tokens`' columns (ids unknown: −1)."""
    rows: dict[str, list] = {name: [] for name in TOKEN_TABLE_SCHEMA}
    for model, stored in (("base", "pre"), ("dpo", "dpo")):
        for direction in ("top", "bottom"):
            found = answer["tokens"][model]
            for rank, (token, score) in enumerate(zip(found[f"{direction}_tokens"], found[f"{direction}_scores"]), 1):
                for name, value in zip(rows, (stored, direction, rank, -1, token, score)):
                    rows[name].append(value)
    return pl.DataFrame(rows, schema=TOKEN_TABLE_SCHEMA)


def prompts_table(prompts: pl.DataFrame) -> Table | Text:
    moved = most_shifted(prompts)
    if moved.is_empty():
        return Text("this cache stores no per-prompt activations", style="dim")
    table = Table(box=None, padding=(0, 1), header_style="bold", expand=True)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("δ", justify="right", no_wrap=True)
    table.add_column("ā base", justify="right", no_wrap=True)
    table.add_column("ā DPO", justify="right", no_wrap=True)
    table.add_column("prompt", ratio=1, overflow="fold")
    for row in moved.iter_rows(named=True):
        table.add_row(
            str(row["prompt"]),
            f"{row['act_shift']:+.3f}",
            f"{row['act_pre']:+.3f}",
            f"{row['act_dpo']:+.3f}",
            Text(" ".join(row["text"].split())),
        )  # never markup: "[/INST]"
    return table


def shade(value: float, scale: float) -> str:
    """A token's background: orange for a positive activation, blue for a negative one, brighter the larger."""
    level = min(abs(value) / scale, 1.0) if scale > 0 else 0.0
    red, green, blue = (255, 140, 0) if value > 0 else (40, 110, 255)
    background = f"rgb({round(red * level)},{round(green * level)},{round(blue * level)})"
    return f"{'bold ' if level > 0.5 else ''}white on {background}"


def examples_text(answer: dict) -> Text:
    """Each prompt: its number and both models' ā, then each model's prompt and continuation, the positions the
    protocol averages shaded by the neuron's activation there on one scale for the whole answer (unread: dim)."""
    read_acts = [
        abs(act)
        for example in answer["examples"]
        for model in ("base", "dpo")
        for act, read in zip(example[model]["acts"], example[model]["read"])
        if read
    ]
    scale = max(read_acts, default=0.0)
    text = Text()
    text.append(
        f"scale: full colour at |a| = {scale:.3g}; shaded: the {answer['positions']} positions, which ā averages"
    )
    for example in answer["examples"]:
        text.append(f"\n#{example['prompt']}", style="bold")
        for model, label in (("base", "base"), ("dpo", "DPO")):
            row = example[model]
            stored = "" if row.get("stored") is None else f" (cache {row['stored']:+.3f})"
            text.append(f"  ā {label} {row['mean']:+.3f}{stored}")
        for model, label in (("base", "base"), ("dpo", "DPO ")):
            row = example[model]
            text.append(f"\n  {label} ", style="bold")
            for position, (token, act, read) in enumerate(zip(row["tokens"], row["acts"], row["read"])):
                shown = token.replace("\n", "⏎")
                if position == row["prompt_length"]:
                    text.append("│", style="dim")
                text.append(shown, style=shade(act, scale) if read else "dim")
    return text


def runs_with(cache_path, layer: int, index: int) -> list[PatchRun]:
    """The stored runs whose neuron set held this neuron (each run records its set as {layer: [indices]})."""
    return [run for run in list_runs(cache_path) if index in (run.settings.get("neurons") or {}).get(str(layer), ())]


def history_table(runs: list[PatchRun]) -> Table | Text:
    if not runs:
        return Text("no stored run patched this neuron (the papers' comparison: 4, then P)", style="dim")
    table = Table(box=None, padding=(0, 1), header_style="bold", expand=True)
    table.add_column("run", ratio=1, overflow="fold")
    for name in ("mode", "neurons", "toxicity", "recovered"):
        table.add_column(name, justify="right", no_wrap=True)
    for run in runs:
        metrics = run.metrics
        toxicity, recovered = metrics.get("toxicity"), metrics.get("recovered")
        table.add_row(
            Text(str(run.settings.get("label", run.run_id))),
            Text(str(run.settings.get("mode", ""))),
            f"{metrics.get('neurons', 0):,}",
            f"{toxicity:.4f}" if isinstance(toxicity, float) else "",
            f"{recovered:.1%}" if isinstance(recovered, float) and math.isfinite(recovered) else "n/a",
        )
    return table


class DetailScreen(ShowsWorkerErrors, Screen):
    """Everything stored about one neuron; read in a worker so the h5py lock is held only briefly."""

    if TYPE_CHECKING:  # the app this screen runs in (Textual's own idiom; nothing at runtime)
        app = getters.app(ExplorerApp)

    CSS_PATH = "detail.tcss"
    BINDINGS = [
        Binding("escape", "app.pop_screen", "back", id="detail.back"),
        Binding("space", "mark", "mark", id="detail.mark", tooltip="mark or unmark this neuron"),
        Binding(
            "left_square_bracket,N",
            "step(-1)",
            "previous",
            id="detail.previous",
            group=NEIGHBOURS,
            tooltip="the previous neuron of the table's view",
        ),
        Binding(
            "right_square_bracket,n",
            "step(1)",
            "next",
            id="detail.next",
            group=NEIGHBOURS,
            tooltip="the next neuron of the table's view (its order, its filters)",
        ),
        Binding(
            "t",
            "examples",
            "tokens",
            id="detail.examples",
            tooltip="the neuron's activation at every token of its top prompts (read in the lab's model worker)",
        ),
        Binding("j,down", "scroll('down')", "scroll", show=False, id="detail.down"),
        Binding("k,up", "scroll('up')", "scroll", show=False, id="detail.up"),
        Binding("g,home", "scroll('home')", "top", show=False, id="detail.top"),
        Binding("G,end", "scroll('end')", "bottom", show=False, id="detail.bottom"),
    ]

    def __init__(self, store: Store, layer: int, index: int) -> None:
        super().__init__()
        self.store, self.neuron_layer, self.neuron_index = store, layer, index
        self.lens_rule: dict | None = None
        self.top_prompts: list[int] = []  # the most shifted prompts' indices: the examples ask for these
        self.tokens_missing = False  # compute left this neuron's value-vector tokens out: the examples bring them

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(id="detail-body"):
            yield LoadingIndicator()
        yield KeyFooter()

    def on_mount(self) -> None:
        self.watch(self.app, "lab_version", self.show_examples, init=False)
        self.load()

    @work(thread=True, exclusive=True, group="detail", exit_on_error=False, description="reading the neuron")
    def load(self) -> None:
        reader = self.store.reader
        record = reader.neuron(self.neuron_layer, self.neuron_index)
        self.lens_rule = reader.lens_rule()
        self.post_message(
            DetailLoaded(
                record,
                reader.top_tokens(self.neuron_layer, self.neuron_index),
                reader.prompt_activations(self.neuron_layer, self.neuron_index),
                runs_with(self.store.path, self.neuron_layer, self.neuron_index),
                reader.neuron_dynamics(self.neuron_layer, self.neuron_index),
            )
        )

    async def on_detail_loaded(self, message: DetailLoaded) -> None:
        body = self.query_one("#detail-body", VerticalScroll)
        await body.remove_children()
        record, prompts = message.record, message.prompts
        marked = " · marked" if (self.neuron_layer, self.neuron_index) in self.store.marked else ""
        await body.mount_all(
            [
                Static(headline(record), id="detail-headline"),
                Static(
                    Text("Metrics, both models" + marked, style="bold"), classes="section-title", id="metrics-title"
                ),
                Static(metrics_table(record), id="detail-metrics"),
                *self.trajectory(message.dynamics),
                Static(Text("Tokens the value vector writes (logit lens)", style="bold"), classes="section-title"),
                Static(tokens_table(message.tokens, self.lens_rule), id="detail-tokens"),
                Static(Text("Activation distribution over the prompts", style="bold"), classes="section-title"),
            ]
        )
        if "act_pre" in prompts.columns:
            await body.mount(
                ActivationHistogram(prompts["act_pre"].to_numpy(), prompts["act_dpo"].to_numpy(), id="detail-histogram")
            )
        await body.mount_all(
            [
                Static(
                    Text(f"Prompts where it shifts most (top {TOP_PROMPTS} by |δ|)", style="bold"),
                    classes="section-title",
                ),
                Static(prompts_table(prompts), id="detail-prompts"),
                Static(Text("Per token, on those prompts", style="bold"), classes="section-title"),
                Static(id="detail-examples"),
                Static(Text("Stored patch runs that acted on it", style="bold"), classes="section-title"),
                Static(history_table(message.runs), id="detail-history"),
            ]
        )
        self.top_prompts = most_shifted(prompts)["prompt"].to_list() if "prompt" in prompts.columns else []
        self.tokens_missing = message.tokens.is_empty() and (self.lens_rule or {}).get("rule") == "top"
        if self.app.lab.ready and (self.neuron_layer, self.neuron_index) not in self.app.lab.examples:
            self.action_examples()  # the worker is loaded anyway: reading 8 prompts takes a moment
        self.show_examples()

    def show_examples(self) -> None:
        """The per-token section: the worker's answer for this neuron, that it is reading, or how to ask."""
        found = self.query("#detail-examples")
        if not found:
            return
        lab, neuron = self.app.lab, (self.neuron_layer, self.neuron_index)
        answer = lab.examples.get(neuron)
        if isinstance(answer, dict):
            content = examples_text(answer)
            if self.tokens_missing and "tokens" in answer:
                self.query_one("#detail-tokens", Static).update(tokens_table(answered_tokens(answer)))
        elif lab.asking is not None and (lab.asking.layer, lab.asking.neuron) == neuron:
            content = Text(lab.status() if lab.loaded else "starting the lab's model worker (it loads both models)…")
        elif isinstance(answer, str):
            content = Text(f"could not read them: {answer} · t tries again", style="red")
        elif not self.top_prompts:
            content = Text("this cache stores no per-prompt activations", style="dim")
        else:
            content = Text(
                "t: the activation at every token of these prompts, read in the lab's model worker "
                "(it loads both models the first time)",
                style="dim",
            )
        found.first(Static).update(content)

    @staticmethod
    def trajectory(dynamics: tuple[list[str], np.ndarray] | None) -> list[Static]:
        """The title and the line of the neuron's Δ across training; nothing for a cache without a series."""
        if dynamics is None:
            return []
        steps, values = dynamics
        title = Text(f"Δ across training ({len(steps)} steps, final last)", style="bold")
        return [
            Static(title, classes="section-title"),
            Static(trajectory_text(steps, values), id="detail-dynamics"),
        ]

    def action_step(self, step: int) -> None:
        """Show the next (previous) neuron of the table's view; the table's cursor follows."""
        row = self.store.find(self.neuron_layer, self.neuron_index) if self.store.loaded else None
        neighbour = None if row is None else self.store.neuron_at(row + step)
        if row is None or neighbour is None:
            self.notify(
                "this neuron is not in the table's view"
                if row is None
                else f"no {'next' if step > 0 else 'previous'} neuron in the view",
                severity="warning",
            )
            return
        self.neuron_layer, self.neuron_index = neighbour
        self.app.view_row = row + step
        self.load()

    def action_examples(self) -> None:
        if not self.top_prompts:
            self.notify("this cache stores no per-prompt activations", severity="warning")
            return
        self.app.lab_neuron_examples(self.neuron_layer, self.neuron_index, self.top_prompts)

    def action_scroll(self, where: str) -> None:
        body = self.query_one("#detail-body", VerticalScroll)
        {"down": body.scroll_down, "up": body.scroll_up, "home": body.scroll_home, "end": body.scroll_end}[where](
            animate=False
        )

    def action_mark(self) -> None:
        marked = self.store.toggle_mark(self.neuron_layer, self.neuron_index)
        self.post_message(MarksChanged())
        self.notify(f"{neuron_id(self.neuron_layer, self.neuron_index)} {'marked' if marked else 'unmarked'}")
