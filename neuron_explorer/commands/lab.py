"""The prompt lab on the command line: one prompt through the base, DPO and (with --mode) patched base model of a
cache, by the cache's own protocol (truncation, greedy decoding, new tokens, positions).

Prints the three continuations with their toxicity, where along the depth and at which generated token the probe
direction rises or is suppressed (the projection of the residual stream on the probe, layers × generated tokens,
for each model and base − DPO), and the prompt's top neurons by Δ and by |δ| (ā on this prompt in both models, and
P and Δ by the cache's definitions). --json writes the whole result, with every neuron's ā, for scripts.

--serve is the explorer's model worker: it loads the pair once, then answers requests read as JSON lines on stdin
with job events on stdout (neuron_explorer/engine/lab/protocol.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from neuron_explorer.cache.atomic import write_json_atomically
from neuron_explorer.commands.arguments import output_file
from neuron_explorer.engine.defaults import default_cache_path
from neuron_explorer.engine.lab.protocol import DEFAULT_TOP, layer_bins, lens_difference
from neuron_explorer.engine.patching import modes
from neuron_explorer.spec import intervention
from neuron_explorer.spec.settings import DeviceSettings, ScorerSettings, add_options, positive_count

if TYPE_CHECKING:  # torch: imported inside the functions that run a model
    from neuron_explorer.engine.lab.session import LabSession
    from neuron_explorer.events import Reporter

HELP = "one prompt through base, DPO and a patched base model: continuations, probe lens, top neurons"
HEAT_COLUMNS = 10  # layers are averaged into at most this many columns of the printed heat map
SHOWN_NEURONS = 12


def neuron_list(text: str) -> tuple[tuple[int, int], ...]:
    """--tokens: LAYER:NEURON pairs, comma-separated."""
    try:
        parsed = [tuple(int(part) for part in item.split(":")) for item in text.split(",")]
    except ValueError:
        parsed = []
    if not parsed or any(len(pair) != 2 or min(pair) < 0 for pair in parsed):
        raise argparse.ArgumentTypeError(f"'{text}' is not a list of LAYER:NEURON pairs such as 12:345,3:7")
    return tuple((layer, neuron) for layer, neuron in parsed)


def add_arguments(parser) -> None:
    parser.epilog = modes.describe()
    parser.add_argument("file", nargs="?", type=Path, default=None, help=f"the cache (default: {default_cache_path()})")
    parser.add_argument("--prompt", default=None, help="the prompt (required unless --serve)")
    what = parser.add_argument_group(
        "intervention (the patched run, as `patch` takes it; none without --set or --mode)"
    )
    intervention.add_arguments(what)
    output = parser.add_argument_group("output")
    output.add_argument(
        "--top", type=positive_count, default=DEFAULT_TOP, help="neurons kept by Δ and by |δ| each (%(default)s)"
    )
    output.add_argument(
        "--json",
        type=output_file,
        default=None,
        help="write the whole result here (with every neuron's ā in both models)",
    )
    output.add_argument(
        "--tokens",
        type=neuron_list,
        default=None,
        metavar="L:N[,L:N...]",
        help="instead of a prompt: the value-vector tokens of these neurons in both models (for "
        "neurons whose tokens `compute --lens` left out of the cache)",
    )
    output.add_argument(
        "--serve",
        action="store_true",
        help="be the explorer's model worker: JSON-line requests on stdin, job events on stdout",
    )
    models = parser.add_argument_group("models (default: the specs recorded in the cache)")
    models.add_argument("--base", default=None)
    models.add_argument("--tuned", default=None)
    add_options(models, DeviceSettings())
    add_options(models, ScorerSettings(), names=("scorer",))


def run(args) -> int:
    from neuron_explorer.cache.reader import CacheReader
    from neuron_explorer.errors import UserError

    path = Path(args.file or default_cache_path()).expanduser()
    if args.serve:
        if args.prompt or args.json or args.sets or args.mode:
            raise UserError("--serve takes its prompts as requests on stdin: leave out --prompt, --set, --mode, --json")
        return _serve(path, args)
    if args.tokens:
        if args.prompt or args.sets or args.mode:
            raise UserError("--tokens computes value-vector tokens, no prompt: leave out --prompt, --set, --mode")
        return _tokens(path, args)
    if not args.prompt or not args.prompt.strip():
        raise UserError('give the prompt: --prompt "..." (or --serve for the explorer\'s worker)')
    from neuron_explorer.commands.reporting import reporting
    from neuron_explorer.engine.lab.protocol import RunRequest
    from neuron_explorer.engine.patching.runs import check_spec
    from neuron_explorer.spec.intervention import Intervention

    # --set alone patches as `patch` would; a bad mode, parameter or positions fails here
    patched = Intervention.from_args(args) if args.sets or args.mode else None
    request = RunRequest(id=1, prompt=args.prompt, intervention=patched, top=args.top, full=bool(args.json))
    with CacheReader(path) as reader:  # a bad file or set fails here, before the models load
        if patched is not None:
            check_spec(patched, reader)

    with reporting(json_lines=False) as report:
        with _session(path, args, report) as session:
            result = session.answer(request, report=report)
            groups = session.reader.neuron_array("group")
    answer = result.to_dict()  # with every neuron's ā when --json asked for it (request.full)
    if args.json:
        write_json_atomically(args.json, answer, indent=None)
    show(answer, groups)
    if args.json:
        print(f"\nwrote {args.json}")
    return 0


def _tokens(path: Path, args) -> int:
    """The value-vector tokens of the neurons asked for (what a worker's `tokens` request answers)."""
    from rich.console import Console
    from rich.table import Table

    from neuron_explorer.commands.reporting import reporting
    from neuron_explorer.engine.lab.protocol import TokensRequest

    with reporting(json_lines=False) as report:
        with _session(path, args, report) as session:
            answer = session.value_tokens(TokensRequest(1, args.tokens)).to_dict()
    if args.json:
        write_json_atomically(args.json, answer, indent=None)
    console = Console(highlight=False)
    for row, (layer, neuron) in enumerate(answer["neurons"]):
        table = Table(title=f"L{layer}/N{neuron}: tokens its value vector writes (logit lens)", title_justify="left")
        columns = [(model, direction) for direction in ("top", "bottom") for model in ("base", "dpo")]
        for model, direction in columns:
            table.add_column(f"{direction} {model}", no_wrap=True)
        for rank in range(len(answer["base"]["top_tokens"][row])):
            table.add_row(
                *(
                    f"{answer[model][f'{direction}_tokens'][row][rank]!r} "
                    f"{answer[model][f'{direction}_scores'][row][rank]:+.2f}"
                    for model, direction in columns
                )
            )
        console.print(table)
    return 0


def _serve(path: Path, args) -> int:
    from neuron_explorer.commands.reporting import reporting
    from neuron_explorer.engine.lab.worker import serve

    with reporting(json_lines=True) as report:  # a model that cannot load leaves as a `failed` event
        with _session(path, args, report) as session:
            serve(session, sys.stdin, report)
    return 0


def show(result: dict, groups) -> None:
    """The result as rich tables on stdout."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from neuron_explorer.cache.schema import GROUP_NAMES

    console = Console(highlight=False)  # user text (prompt, label, continuations, tokens) is escaped: not markup
    protocol = result["protocol"]
    cut = " (truncated)" if result["truncated"] else ""
    console.print(
        f"prompt: {escape(repr(result['prompt']))}: {len(result['prompt_tokens'])} tokens{cut}; "
        f"{protocol['new_tokens']} greedy new tokens; ā over the {protocol['positions']} positions"
    )
    if result["intervention"]:
        shown = result["intervention"]
        params = ", ".join(f"{k}={v:g}" for k, v in shown["params"].items() if v is not None) or "no parameters"
        fitted = f"; α fitted on {shown['alpha_fitted_on']}" if "alpha_fitted_on" in shown else ""
        console.print(
            f"patched: {escape(str(shown['label']))} ({shown['neurons']:,} neurons, positions {shown['positions']}, "
            f"{params}{fitted})"
        )
    runs = result["runs"]
    table = Table(title=f"continuations (toxicity by {result['scorer']})", title_justify="left")
    table.add_column("model")
    table.add_column("toxicity", justify="right")
    table.add_column("continuation", overflow="fold")
    for name, run in runs.items():
        table.add_row(name, f"{run['toxicity']:.3f}", escape(run["continuation"]))
    console.print(table)
    n_prompt = len(result["prompt_tokens"])
    lenses = {name: np.asarray(run["lens"]["residual"]) for name, run in runs.items()}
    lenses["base − dpo"] = lens_difference(lenses["base"], lenses["dpo"])
    for name, lens in lenses.items():
        tokens = runs.get(name, runs["base"])["tokens"]
        console.print(_heat_table(f"probe projection of the residual stream: {name}", lens, n_prompt, tokens))
    totals = result["totals"]
    console.print(
        f"this prompt: Σ+Δ {totals['sum_positive']:+.4g}, Σ−Δ {totals['sum_negative']:+.4g}, net {totals['net']:+.4g}"
    )
    neurons = result["neurons"]
    rows = list(range(len(neurons["layer"])))
    by_delta = sorted(rows, key=lambda i: -neurons["contribution"][i])
    by_shift = sorted(rows, key=lambda i: -abs(neurons["act_shift"][i]))
    for title, order in (
        ("top neurons by Δ on this prompt", by_delta),
        ("top neurons by |δ| on this prompt", by_shift),
    ):
        table = Table(title=title, title_justify="left")
        for column in ("neuron", "group", "ā_pre", "ā_dpo", "δ", "Δ"):
            table.add_column(column, justify="left" if column in ("neuron", "group") else "right")
        for i in order[:SHOWN_NEURONS]:
            layer, index = neurons["layer"][i], neurons["neuron"][i]
            table.add_row(
                f"L{layer}/N{index}",
                GROUP_NAMES[int(groups[layer, index])],
                f"{neurons['act_pre'][i]:+.3f}",
                f"{neurons['act_dpo'][i]:+.3f}",
                f"{neurons['act_shift'][i]:+.3f}",
                f"{neurons['contribution'][i]:+.3e}",
            )
        console.print(table)


def _heat_table(title: str, lens: np.ndarray, n_prompt: int, tokens: list[str]):
    """Generated tokens (rows) × layers (averaged into at most HEAT_COLUMNS columns), coloured by sign: 80 columns
    wide whatever the depth."""
    from rich.markup import escape
    from rich.table import Table

    bins = layer_bins(lens.shape[0], HEAT_COLUMNS)
    table = Table(title=title, title_justify="left", padding=(0, 1, 0, 0), show_edge=False, box=None)
    table.add_column("token", no_wrap=True, max_width=10)
    for layers in bins:
        first, last = layers[0], layers[-1]
        table.add_column(f"L{first}" if first == last else f"L{first}-{last}", justify="right", no_wrap=True)
    binned = np.stack([lens[layers].mean(axis=0) for layers in bins], axis=1)  # (T, bins)
    for column in range(n_prompt, lens.shape[1]):
        position = column - n_prompt
        token = repr(tokens[position])[1:-1][:10] if position < len(tokens) else "·"
        table.add_row(
            escape(token), *(f"[{'red' if value > 0 else 'blue'}]{value:+.1f}[/]" for value in binned[column])
        )
    return table


def _session(path: Path, args, report: Reporter) -> LabSession:
    """The lab's models for the cache, as the command's options name them (one request, tokens, or the worker)."""
    from neuron_explorer.engine.lab.session import LabSession

    return LabSession(
        path, base=args.base, tuned=args.tuned, device=args.device, dtype=args.dtype, scorer=args.scorer, report=report
    )
