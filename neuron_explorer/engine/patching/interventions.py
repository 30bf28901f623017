"""Interventions on neuron activations (METHOD §4), each a context manager that always removes its hooks.

Every neuron intervention is a forward-PRE hook on each touched layer's MLP output projection
(`arch.out_proj`), whose input is the activation vector m (B, T, d_mlp): the hook overwrites, shifts or scales
m at the chosen indices (index tensors kept on the model's device) before the projection writes them into the
residual stream. Residual subtraction (Lee) is a forward hook on the last block's output instead.

Positions: ``all`` (default) acts at every position of every forward call, so perplexity passes are patched too;
``newest`` acts only at the last position of each call, the authors' protocol: in the KV-cache generation loop
every single-token step is the newest position, and on the prefill only the last prompt token is touched. A
perplexity pass under ``newest`` would change only the last position's logits, which perplexity does not score:
`Intervention.scoring_pass` says how a scoring pass sees the intervention instead. With `rows` an intervention acts
on those batch rows only: the prompt lab runs the base model and the patched base as one batch of two.

Modes (the registry of patch modes is engine/patching/modes.py):
  patch-mean    m_i ← ā_i^dpo (the paper's activation patching: the DPO model's dataset mean)
  shift         m_i ← m_i − α δ_i  (add DPO's per-neuron mean shift, δ = ā_pre − ā_dpo; α = 1 by default)
  scale         m_i ← f · m_i
  constant      m_i ← c
  zero-ablate   m_i ← 0 (equivalent to zeroing the value vectors; the output bias stays)
  mean-ablate   m_i ← ā_i^pre
  tuning-free   Yang v3's edit from base statistics only: TP/AN clamped to (1−α)ā, AP/TN to (1+α)ā, for the
                fraction β of each sign class chosen by |cos with the toxic embedding|
  subtract      h_last ← h_last − α ŵ on the last block's output (Lee's residual subtraction of the probe)
  patch-live    m_i ← the DPO model's own per-token m_i: the donor runs in lockstep on the same tokens (its own KV
                cache during generation), so every forward call of the base model first runs the donor (about 2×
                the cost of the evaluation, by nature)
  patch-tokens  m_i ← the donor model's per-token m_i for one forward call of the same shape (see
                `record_activations`); used by the correctness checks
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from neuron_explorer.cache.schema import SIGN_CLASSES, sign_classes
from neuron_explorer.engine.model.hooks import forward_hooks
from neuron_explorer.engine.model.loading import LoadedModel, check_pair, execution_device, weights_loaded
from neuron_explorer.engine.patching.neuron_sets import NeuronSelection
from neuron_explorer.spec.intervention import INTERVENTION_POSITIONS, Positions

ALL_POSITIONS_PASS = "one pass per window, the intervention at every position"
NEWEST_AS_GENERATED_PASS = (
    "one pass per window, the intervention at every position: the same as scoring the window "
    "token by token through the KV cache with the newest position edited, as in generation"
)
# The sign classes whose mean write ā·cos points along the toxic direction: the tuning-free edit lowers their
# activations and takes the fraction β of each by the highest |cos| (METHOD §4); AP and TN the other way round.
WRITES_TOXIC = ("TP", "AN")


@dataclass
class LayerEdit:
    """What to do to the chosen neurons of one layer: set, add or multiply, as dense (d_mlp,) vectors on the device.

    Dense vectors make each edit one element-wise pass (`torch.where(mask, values, m)`, `m + shift`, `m * factor`):
    measured 2–4× faster on a CPU than indexing the chosen columns, and exact for the other neurons (x + 0 = x,
    x · 1 = x).
    """

    indices: torch.Tensor  # (k,) long, on the device
    op: str  # "set" | "add" | "mul" | "donor"
    mask: torch.Tensor  # (d_mlp,) bool
    dense: torch.Tensor | None  # (d_mlp,) values for set, shift for add (0 elsewhere), factor for mul (1 elsewhere)


@dataclass
class Intervention:
    """A set of layer edits (or a residual subtraction) that can be switched on with ``with intervention.hooks():``."""

    loaded: LoadedModel
    mode: str
    edits: dict[int, LayerEdit] = field(default_factory=dict)
    positions: Positions = Positions.ALL
    residual: torch.Tensor | None = None  # (d_model,) α·ŵ for `subtract`
    donor: dict[int, torch.Tensor] | None = None  # layer -> (B, T, d_mlp) for patch-tokens
    live_donor: LoadedModel | None = None  # a LoadedModel run in lockstep for patch-live
    details: dict = field(default_factory=dict)
    rows: slice | None = None  # the batch rows it acts on (the lab runs base and patched as one batch); None: all

    def __post_init__(self) -> None:
        self.positions = Positions.parse(self.positions)
        if self.positions not in INTERVENTION_POSITIONS:
            from neuron_explorer.errors import UserError

            raise UserError(f"positions '{self.positions}' is not one of {', '.join(INTERVENTION_POSITIONS)}")

    @property
    def n_neurons(self) -> int:
        return sum(int(edit.indices.numel()) for edit in self.edits.values())

    def layer_counts(self) -> dict[int, int]:
        return {layer: int(edit.indices.numel()) for layer, edit in self.edits.items()}

    def scoring_pass(self) -> tuple[Intervention | None, str]:
        """The intervention as a teacher-forced scoring pass (perplexity) must see it to measure fluency as generation
        does, and how that pass was done (for the run record); (None, why) when no such pass exists.

        In generation with the KV cache every new token is the newest position, so a newest-position edit reaches
        every generated position, and the cache keeps the keys and values computed from the edited activations.
        Scored token by token through the cache, every position of a window is edited; because the model is causal,
        that equals one pass over the window with the edit at every position (tests/patching runs the literal
        token-by-token computation). A recorded donor (patch-tokens) holds the activations of other tokens.
        """
        if self.mode == "patch-tokens":
            return None, "n/a: the donor's activations were recorded on other tokens than the perplexity windows"
        if self.positions is Positions.ALL:
            return self, ALL_POSITIONS_PASS
        return replace(self, positions=Positions.ALL), NEWEST_AS_GENERATED_PASS

    @contextmanager
    def hooks(self) -> Iterator[Intervention]:
        """Install the hooks for the duration of the block; they come off even when the block raises."""
        arch, model = self.loaded.arch, self.loaded.model
        pre = [(arch.out_proj(model, layer), self._pre_hook(layer, edit)) for layer, edit in sorted(self.edits.items())]
        post = []
        if self.residual is not None:
            post.append((arch.layers(model)[-1], self._residual_hook()))
        with forward_hooks(pre, pre=True), forward_hooks(post), self._lockstep():
            yield self

    @contextmanager
    def _lockstep(self) -> Iterator[None]:
        """For patch-live: before each forward call of the model, run the donor on the same inputs and keep its
        activations of the edited layers in `self.donor`. The donor keeps its own KV cache: a call without
        a `cache` starts a new one (the prefill), a call with one continues the donor's."""
        if self.live_donor is None:
            yield
            return
        donor, layers = self.live_donor, sorted(self.edits)
        state: dict = {"cache": None}
        captured: dict[int, torch.Tensor] = {}

        def capture(layer: int) -> Callable:
            def hook(module, inputs):
                captured[layer] = inputs[0]

            return hook

        def before(module, args, kwargs):
            call = {
                key: kwargs[key]
                for key in ("input_ids", "attention_mask", "position_ids", "use_cache")
                if key in kwargs
            }
            if args:
                call["input_ids"] = args[0]
            use_cache = bool(kwargs.get("use_cache"))
            if use_cache:
                call["cache"] = state["cache"] if kwargs.get("cache") is not None else None
            with torch.no_grad():
                out = donor.model(**call, logits_to_keep=1)
            state["cache"] = out.cache if use_cache else None
            self.donor = dict(captured)

        handle = self.loaded.model.register_forward_pre_hook(before, with_kwargs=True)
        try:
            with forward_hooks(
                [(donor.arch.out_proj(donor.model, layer), capture(layer)) for layer in layers], pre=True
            ):
                yield
        finally:
            handle.remove()
            self.donor, state["cache"] = None, None

    def _pre_hook(self, layer: int, edit: LayerEdit) -> Callable:
        newest = self.positions is Positions.NEWEST
        op, mask, dense = edit.op, edit.mask, edit.dense

        def apply(m: torch.Tensor, donor: torch.Tensor | None) -> torch.Tensor:
            if op == "donor":
                if donor is None:
                    raise RuntimeError(f"layer {layer}: a donor edit ran without the donor's activations")
                return torch.where(mask, donor, m)
            if dense is None:  # _layer_edits gives every op but "donor" its dense vector
                raise RuntimeError(f"layer {layer}: a '{op}' edit has no values")
            if op == "set":
                return torch.where(mask, dense, m)
            if op == "add":
                return m + dense
            return m * dense

        rows = slice(None) if self.rows is None else self.rows
        where = (rows, -1) if newest else (rows,)

        def hook(module, inputs):
            m = inputs[0]
            donor = self.donor[layer] if op == "donor" else None
            if self.rows is None and not newest:
                return (apply(m, donor), *inputs[1:])
            m = m.clone()
            m[where] = apply(m[where], None if donor is None else donor[where])
            return (m, *inputs[1:])

        return hook

    def _residual_hook(self) -> Callable:
        vector = self.residual
        rows = slice(None) if self.rows is None else self.rows
        where = (rows, -1) if self.positions is Positions.NEWEST else (rows,)

        def hook(module, inputs, output):
            hidden = output[0] if isinstance(output, tuple) else output
            hidden = hidden.clone()
            hidden[where] -= vector.to(hidden.dtype)
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

        return hook


# -- builders -----------------------------------------------------------------------------------------------------


def _layer_edits(
    loaded, selection: NeuronSelection, op: str, values: np.ndarray | float | None
) -> dict[int, LayerEdit]:
    """One LayerEdit per layer of the selection; `values` is a (n_layers, d_mlp) array, a scalar or None."""
    edits = {}
    d_mlp = loaded.arch.d_mlp(loaded.model)
    neutral = {"set": 0.0, "add": 0.0, "mul": 1.0, "donor": 0.0}[op]
    for layer, indices in selection.by_layer().items():
        module = loaded.arch.out_proj(loaded.model, layer)
        dtype, device = module.weight.dtype, execution_device(module)  # never `meta`, even for an offloaded layer
        index_tensor = torch.as_tensor(indices, dtype=torch.long, device=device)
        mask = torch.zeros(d_mlp, dtype=torch.bool, device=device)
        mask[index_tensor] = True
        dense = None
        if op != "donor":
            dense = torch.full((d_mlp,), neutral, dtype=dtype, device=device)
            if isinstance(values, np.ndarray):
                dense[index_tensor] = torch.as_tensor(values[layer, indices], dtype=dtype, device=device)
            elif values is None:
                raise ValueError(f"a '{op}' edit needs values: an array or a scalar")
            else:
                dense[index_tensor] = float(values)
        edits[layer] = LayerEdit(index_tensor, op, mask, dense)
    return edits


def _check_shape(loaded, array: np.ndarray, what: str) -> np.ndarray:
    arch, model = loaded.arch, loaded.model
    expected = (arch.n_layers(model), arch.d_mlp(model))
    array = np.asarray(array, dtype=np.float64)
    if array.shape != expected:
        from neuron_explorer.errors import UserError

        raise UserError(
            f"{what} has shape {array.shape} but the model has {expected[0]} layers of {expected[1]} "
            f"neurons: use the cache computed for this model"
        )
    return array


def patch_mean(
    loaded, selection: NeuronSelection, act_dpo: np.ndarray, positions: Positions = Positions.ALL
) -> Intervention:
    """Overwrite the chosen activations with the DPO model's mean activation ā^dpo (the paper's patching)."""
    act_dpo = _check_shape(loaded, act_dpo, "ā_dpo")
    return Intervention(loaded, "patch-mean", _layer_edits(loaded, selection, "set", act_dpo), positions)


def add_shift(
    loaded, selection: NeuronSelection, act_shift: np.ndarray, alpha: float = 1.0, positions: Positions = Positions.ALL
) -> Intervention:
    """m_i ← m_i − α δ_i: move each chosen activation by DPO's mean shift (per token, keeps its variation)."""
    act_shift = _check_shape(loaded, act_shift, "δ")
    return Intervention(
        loaded, "shift", _layer_edits(loaded, selection, "add", -alpha * act_shift), positions, details={"alpha": alpha}
    )


def scale(loaded, selection: NeuronSelection, factor: float, positions: Positions = Positions.ALL) -> Intervention:
    return Intervention(
        loaded, "scale", _layer_edits(loaded, selection, "mul", float(factor)), positions, details={"factor": factor}
    )


def set_constant(
    loaded, selection: NeuronSelection, value: float, positions: Positions = Positions.ALL
) -> Intervention:
    return Intervention(
        loaded, "constant", _layer_edits(loaded, selection, "set", float(value)), positions, details={"value": value}
    )


def zero_ablate(loaded, selection: NeuronSelection, positions: Positions = Positions.ALL) -> Intervention:
    """Zero the chosen neurons' writes, m_i v_i = 0: the same as zeroing their value vectors (bias kept)."""
    return Intervention(loaded, "zero-ablate", _layer_edits(loaded, selection, "set", 0.0), positions)


def mean_ablate(
    loaded, selection: NeuronSelection, act_pre: np.ndarray, positions: Positions = Positions.ALL
) -> Intervention:
    act_pre = _check_shape(loaded, act_pre, "ā_pre")
    return Intervention(loaded, "mean-ablate", _layer_edits(loaded, selection, "set", act_pre), positions)


def value_vector_cosines(loaded, direction: np.ndarray) -> np.ndarray:
    """(n_layers, d_mlp) cos(v_i, direction) from the model's weights."""
    arch, model = loaded.arch, loaded.model
    unit = torch.as_tensor(direction, dtype=torch.float64)
    unit = unit / unit.norm()
    rows = []
    with torch.no_grad():
        for layer in range(arch.n_layers(model)):
            with weights_loaded(arch.layers(model)[layer]):
                values = arch.value_vectors(model, layer).detach().to("cpu", torch.float64)
            rows.append((values @ unit) / values.norm(dim=1).clamp(min=1e-30))
    return torch.stack(rows).numpy()


def tuning_free_selection(
    act_pre: np.ndarray, cos_embedding: np.ndarray, beta: float, eligible: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Sign class -> boolean (n_layers, d_mlp) mask of the neurons the v3 edit clamps.

    Sign classes (`schema.sign_classes`) from cos with the toxic embedding and ā_pre. Within each class the fraction β
    is taken by |cos|: the highest for TP and AN, the
    lowest for AP and TN (METHOD §4).
    """
    if not 0 < beta <= 1:
        from neuron_explorer.errors import UserError

        raise UserError(f"β = {beta} must be in (0, 1]: the fraction of each sign class to edit")
    codes = sign_classes(cos_embedding, act_pre)
    classes = {name: codes == code for code, name in enumerate(SIGN_CLASSES)}
    magnitude = np.abs(cos_embedding).ravel()
    out = {}
    for name, members in classes.items():
        if eligible is not None:
            members = members & eligible
        positions = np.flatnonzero(members.ravel())
        k = int(round(beta * len(positions)))
        mask = np.zeros(act_pre.size, dtype=bool)
        if k:
            order = np.argsort(magnitude[positions], kind="stable")
            take = order[::-1][:k] if name in WRITES_TOXIC else order[:k]
            mask[positions[take]] = True
        out[name] = mask.reshape(act_pre.shape)
    return out


def tuning_free(
    loaded,
    act_pre: np.ndarray,
    cos_embedding: np.ndarray,
    *,
    alpha: float = 0.05,
    beta: float = 0.5,
    restrict: NeuronSelection | None = None,
    positions: Positions = Positions.ALL,
) -> Intervention:
    """Yang v3's activation edit without weight updates: clamp TP/AN to (1−α)ā_pre and AP/TN to (1+α)ā_pre."""
    act_pre = _check_shape(loaded, act_pre, "ā_pre")
    cos_embedding = _check_shape(loaded, cos_embedding, "cos with the toxic embedding")
    eligible = restrict.mask(*act_pre.shape) if restrict is not None else None
    classes = tuning_free_selection(act_pre, cos_embedding, beta, eligible)
    target = act_pre.copy()
    factor = np.ones_like(act_pre)
    chosen = np.zeros(act_pre.shape, dtype=bool)
    for name, mask in classes.items():
        factor[mask] = (1 - alpha) if name in WRITES_TOXIC else (1 + alpha)
        chosen |= mask
    target = target * factor
    layers, indices = np.nonzero(chosen)
    selection = NeuronSelection(neurons=np.stack([layers, indices], 1).astype(np.int64), specs=("tuning-free",))
    counts = {name: int(mask.sum()) for name, mask in classes.items()}
    return Intervention(
        loaded,
        "tuning-free",
        _layer_edits(loaded, selection, "set", target),
        positions,
        details={"alpha": alpha, "beta": beta, "class_counts": counts},
    )


def subtract_direction(
    loaded, direction: np.ndarray, alpha: float, positions: Positions = Positions.ALL
) -> Intervention:
    """Lee's intervention: subtract α·ŵ from the last block's output (the residual stream before the final norm)."""
    last = loaded.arch.layers(loaded.model)[-1]
    unit = torch.as_tensor(
        np.asarray(direction, dtype=np.float64) / np.linalg.norm(direction),
        dtype=loaded.arch.out_proj(loaded.model, 0).weight.dtype,
        device=execution_device(last),
    )
    return Intervention(loaded, "subtract", {}, positions, residual=alpha * unit, details={"alpha": alpha})


def patch_tokens(
    loaded, selection: NeuronSelection, donor_acts: dict[int, torch.Tensor], positions: Positions = Positions.ALL
) -> Intervention:
    """Overwrite the chosen activations with a donor's per-token activations, for forward calls whose (B, T)
    equals the donor recording's (run the donor on the same tokens with `record_activations`)."""
    edits = _layer_edits(loaded, selection, "donor", None)
    missing = sorted(set(edits) - set(donor_acts))
    if missing:
        raise ValueError(f"the donor recording has no activations for layers {missing}")
    return Intervention(loaded, "patch-tokens", edits, positions, donor=donor_acts)


def patch_live(loaded, selection: NeuronSelection, donor, positions: Positions = Positions.ALL) -> Intervention:
    """Overwrite the chosen activations with the donor (DPO) model's own activations on the same tokens, at every
    forward call: the donor runs in lockstep with the patched model."""
    check_pair(loaded, donor)
    return Intervention(
        loaded, "patch-live", _layer_edits(loaded, selection, "donor", None), positions, live_donor=donor
    )


@torch.no_grad()
def record_activations(
    loaded, layers: list[int] | None = None, **forward_kwargs
) -> tuple[dict[int, torch.Tensor], object]:
    """Run ``loaded.model(**forward_kwargs)`` once, capturing each layer's activation vector m (B, T, d_mlp) on
    the device; returns (layer -> m, the model output)."""
    arch, model = loaded.arch, loaded.model
    layers = list(range(arch.n_layers(model))) if layers is None else layers
    captured: dict[int, torch.Tensor] = {}

    def capture(layer: int) -> Callable:
        def hook(module, inputs):
            captured[layer] = inputs[0].detach().clone()

        return hook

    with forward_hooks([(arch.out_proj(model, layer), capture(layer)) for layer in layers], pre=True):
        output = model(**forward_kwargs)
    return captured, output


def hook_count(loaded) -> int:
    """Forward and forward-pre hooks currently registered anywhere in the model (0 when nothing is left behind)."""
    return sum(len(module._forward_hooks) + len(module._forward_pre_hooks) for module in loaded.model.modules())
