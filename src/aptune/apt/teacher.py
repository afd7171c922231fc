"""Self-distillation D_S: the teacher's life cycle, layer sampling and mapping, and L_layer
(docs/method.md#self-distillation; paper Eqs. 7-8). L_pred and Tr are shared with CoFi
(aptune/losses.py)."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..lora import LoRALinear, merge_and_unload
from ..losses import lora_layer_transform, output_prediction_loss
from ..surgery import prune_linear_in
from ..train.optim import Survivors, pad_cols, pad_rows
from ..train.outputs import model_inputs


def rms_normalise(h: torch.Tensor, eps: float = 1e-6, width: torch.Tensor | None = None) -> torch.Tensor:
    """h / sqrt(mean(h², last dim) + eps): T5's hidden states before the layer loss. With
    `width` (the count of kept hidden dims, a 0-d tensor) the mean runs over the kept dims only,
    so that a masked student (zeros in its pruned dims) normalises as its compacted self does."""
    if width is None:
        return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)  # (B, T, d)
    return h * torch.rsqrt(h.pow(2).sum(-1, keepdim=True) / width + eps)  # (B, T, d)


# Hidden states by layer index: every layer's (a list) or the sampled layers' only (a dict).
LayerStates = Sequence[torch.Tensor] | Mapping[int, torch.Tensor]


def sample_teacher_layers(n_layers: int, generator: torch.Generator, groups: int = 4) -> list[int]:
    """One layer drawn uniformly from each of `groups` contiguous, nearly equal blocks (RAIL-KD)."""
    bounds = [round(i * n_layers / groups) for i in range(groups + 1)]
    picks = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if hi > lo:
            # A draw of the run's CPU generator: a host value, no wait for the device.
            picks.append(lo + int(torch.randint(hi - lo, (1,), generator=generator)))
    return picks


def choose_layers(teacher_hidden: LayerStates, student_hidden: list[torch.Tensor],
                  teacher_layers: list[int], candidates: list[int], transform: nn.Module
                  ) -> list[torch.Tensor]:
    """φ(i) = argmin over the candidate j of MSE(Tr(H_s^j), H_t^i), ties to the nearest index, then
    the lower (exact ties, as between equal candidates, stay ties: equal m give equal sums): for
    each i, its position in `candidates` as a (1,) tensor on the device. Nothing is read back: a
    read per step would make every GPU step wait for the device."""
    with torch.no_grad():
        # N · MSE(m, t) = |m|² − 2 m·t + |t|²; the last term is the same for every candidate, so the
        # argmin needs only the first two: dot products, one candidate at a time, so that neither
        # C mapped copies nor C · |𝒯| (B, T, d) differences are alive at once.
        targets = [teacher_hidden[i].flatten() for i in teacher_layers]  # |𝒯| × (N,), views
        errors = []  # C × (|𝒯|,)
        for j in candidates:
            m = apply_transform(transform, student_hidden[j]).flatten()  # (N,)
            errors.append(m.dot(m) - 2 * torch.stack([m.dot(t) for t in targets]))
        errors = torch.stack(errors)  # (C, |𝒯|)
        positions = torch.arange(len(candidates), device=errors.device)  # (C,)
        choices = []
        for p, i in enumerate(teacher_layers):
            # Candidates nearest first: argmin returns the first minimum, so ties go to the nearest.
            order = sorted(range(len(candidates)), key=lambda c: (abs(candidates[c] - i), candidates[c]))
            by_order = torch.stack([positions[c] for c in order])  # (C,), built on the device
            choice = errors[:, p].index_select(0, by_order).argmin().view(1)  # (1,), a place in by_order
            choices.append(by_order.index_select(0, choice))  # (1,)
    return choices


def map_layers(teacher_hidden: list[torch.Tensor], student_hidden: list[torch.Tensor],
               teacher_layers: list[int], alive: list[bool], transform: nn.Module) -> dict[int, int]:
    """φ as {i: j}, read back to the host (for inspection; the training loss keeps it on the device)."""
    candidates = [j for j, ok in enumerate(alive) if ok]
    if not candidates:
        return {}
    choices = choose_layers(teacher_hidden, student_hidden, teacher_layers, candidates, transform)
    return {i: candidates[int(k)] for i, k in zip(teacher_layers, choices)}


def layer_loss(teacher_hidden: list[torch.Tensor], student_hidden: list[torch.Tensor],
               phi: dict[int, int], transform: nn.Module) -> torch.Tensor:
    """Σ_i MSE(Tr(H_s^φ(i)), H_t^i): summed over the sampled layers, not averaged."""
    terms = [F.mse_loss(transform(student_hidden[j]), teacher_hidden[i]) for i, j in phi.items()]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def mapped_layer_loss(teacher_hidden: LayerStates, student_hidden: list[torch.Tensor],
                      teacher_layers: list[int], alive: list[bool], transform: LoRALinear) -> torch.Tensor:
    """`layer_loss` under `map_layers`'s φ, with φ left on the device: each H_s^φ(i) is gathered
    from the stacked candidates by its device-side index instead of by a host-side list index."""
    candidates = [j for j, ok in enumerate(alive) if ok]
    picks = list(dict.fromkeys(teacher_layers))  # each i once, as φ's dict holds it
    if not candidates or not picks:
        return student_hidden[0].new_zeros(()) if student_hidden else torch.zeros(())
    choices = choose_layers(teacher_hidden, student_hidden, picks, candidates, transform)
    stacked = torch.stack([student_hidden[j] for j in candidates])  # (C, B, T, d)
    # H_s^φ(i) for every i in one gather (one backward scatter for all), by device-side indices
    gathered = stacked.index_select(0, torch.cat(choices))  # (|𝒯|, B, T, d)
    del stacked  # the gather keeps only its indices for the backward
    # unbind, not gathered[p]: the backward of each index would zero a whole (|𝒯|, B, T, d)
    # buffer; unbind's stacks the |𝒯| gradients once.
    terms = [F.mse_loss(apply_transform(transform, h), teacher_hidden[i])
             for h, i in zip(gathered.unbind(0), picks)]  # each (B, T, d_t) against (B, T, d_t)
    return torch.stack(terms).sum()


def place(transform: LoRALinear, x: torch.Tensor) -> torch.Tensor:
    """Tr's frozen base W·x + b without the d_t × d_s product. W is built as the identity (bias 0,
    both frozen) and only ever loses rows and columns: both axes alike while Tr follows the
    student's hidden dims (square: W·x is x), the input columns alone once it reads a narrower
    student (`SelfDistillation.start`): x_j then lands on the teacher dim of its column's 1, zeros
    elsewhere. That is what F.linear gives (each output adds one x_j · 1 to zeros), without a
    matmul; Tr runs C + 4 times per distillation step (docs/method.md#distillation-losses)."""
    w = transform.weight  # (d_t, d_s), frozen 0/1
    if w.shape[0] == w.shape[1]:
        return x  # (B, T, d)
    cached = getattr(transform, "_placement", None)
    if cached is None or cached[0] is not w or cached[1] != w._version:  # cut (a new tensor) or loaded
        cached = transform._placement = (w, w._version, w.argmax(0))  # each student dim's teacher dim
    return x.new_zeros(*x.shape[:-1], w.shape[0]).index_copy(-1, cached[2], x)  # (B, T, d_t)


def apply_transform(transform: LoRALinear, x: torch.Tensor) -> torch.Tensor:
    """Tr(x) = W·x + b + s · W_B W_A x, as LoRALinear.forward computes it, with the frozen base
    by `place`."""
    low_rank = F.linear(F.linear(x, transform.lora_A), transform.lora_B)  # (B, T, r) -> (B, T, d_t)
    return place(transform, x) + transform.scaling * low_rank


@dataclass
class TeacherTargets:
    """What one step's distillation loss needs from the teacher, and nothing more: its prediction
    logits, and per stack the hidden states of the sampled layers only (RMS-normalised for an
    RMS-normed family). The other layers' hidden states are dropped as soon as the teacher's forward
    returns, so they are not alive while the student runs (docs/method.md#distillation-losses)."""

    prediction: Any  # .logits, or .start_logits and .end_logits
    hidden: list[dict[int, torch.Tensor]]  # per stack: sampled layer i -> H_t^i (B, T, d_t)
    picks: list[list[int]]  # per stack: the sampled layers, in draw order


def _prediction_only(outputs: Any, dtype: torch.dtype, length: int | None = None) -> Any:
    """The prediction logits in `dtype`; per-token ones (QA's start and end) cut to `length`."""
    found = {n: getattr(outputs, n, None) for n in ("logits", "start_logits", "end_logits")}
    return SimpleNamespace(**{n: (v if n == "logits" else v[:, :length]).to(dtype)
                              for n, v in found.items() if v is not None})


BUCKET = 16  # the teacher's padded input lengths under half precision: multiples of this


def padded_to_bucket(batch: dict) -> tuple[dict, int | None]:
    """An encoder-only batch right-padded (attention mask 0) to a multiple of BUCKET tokens, and
    its true length; unchanged (None) for encoder-decoder batches, batches without an attention
    mask, or lengths already on a multiple. Why: on CPUs, oneDNN keeps a cached primitive for
    every new shape of a half-precision product, and with dynamic padding every step brings new
    lengths; measured on a compacted MiniLM over lengths 20-63 under bfloat16 autocast, the RSS
    grew by 921 MiB with exact lengths and 140 MiB with multiples of 16, whose forwards were also
    faster (0.062 against 0.075 s at batch 32; README, "A teacher in bfloat16"). The padded
    positions are masked, so the real positions see the same keys; their outputs are cut off."""
    ids, mask = batch.get("input_ids"), batch.get("attention_mask")
    seq2seq = "decoder_input_ids" in batch or getattr(batch.get("labels"), "ndim", 1) > 1
    if ids is None or mask is None or seq2seq or "position_ids" in batch or ids.shape[1] % BUCKET == 0:
        return batch, None
    length = ids.shape[1]
    pad = -length % BUCKET
    padded = {k: F.pad(v, (0, pad), value=0) if k in ("input_ids", "attention_mask", "token_type_ids")
              else v for k, v in batch.items()}  # each (B, T + pad)
    return padded, length


class TeacherSnapshot:
    """An earlier state of the student: frozen copies of its trainable tensors (adapters, head).

    Until the student shrinks, the backbone is shared, so only the copies cost memory: the
    teacher forward substitutes them by name (torch.func.functional_call) and runs the student's
    modules unmasked, in eval mode, without gradients. Once the student is compacted below the
    teacher's size (after the last pruning point, docs/method.md#a-student-as-small-as-its-masks),
    the teacher keeps its own frozen copy of the backbone as it stood (`backbone`, with
    `structure` its kept units in the original numbering) and runs that instead.
    """

    def __init__(self, model: nn.Module) -> None:
        self.state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        self.backbone: nn.Module | None = None
        self.structure = None  # the backbone's Structure, when it has its own

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> "TeacherSnapshot":
        """A snapshot taken earlier, as a checkpoint saved it (apt/checkpoint.py)."""
        snapshot = cls.__new__(cls)
        snapshot.state, snapshot.backbone, snapshot.structure = state, None, None
        return snapshot

    def own_backbone(self, backbone: nn.Module, structure) -> None:
        """Run on `backbone` (a frozen copy of the student before it shrinks) from now on.

        The snapshot's tensors go into the copy and its adapters are merged (W + s·B·A), so that
        the teacher's forward is a plain dense one: no low-rank branches, no substitution per
        step. The copy's unmerged weights are dropped, so this costs no memory once the student
        has been compacted (the copy then holds the only reference to them)."""
        with torch.no_grad():
            for name, value in self.state.items():
                owner, _, leaf = name.rpartition(".")
                setattr(backbone.get_submodule(owner), leaf, nn.Parameter(value, requires_grad=False))
        self.backbone, self.structure = merge_and_unload(backbone).requires_grad_(False), structure

    @torch.no_grad()
    def forward(self, model: nn.Module, batch: dict, masks=None, salience=None):
        inputs = {**model_inputs(batch), "output_hidden_states": True}
        if self.backbone is not None:  # no hooks, frozen, merged, always in eval mode
            return self.backbone(**inputs)
        was_training = model.training
        model.eval()
        salience_active = salience.active if salience is not None else False
        if salience is not None:
            salience.active = False  # teacher activations must not feed salience
        try:
            with masks.disabled() if masks is not None else contextlib.nullcontext():
                out = functional_call(model, self.state, args=(), kwargs=inputs, strict=False)
        finally:
            if salience is not None:
                salience.active = salience_active
            model.train(was_training)
        return out

    def numel(self) -> int:
        if self.backbone is not None:
            return sum(p.numel() for p in self.backbone.parameters())
        return sum(t.numel() for t in self.state.values())


class SelfDistillation:
    """The teacher and Tr over a run: snapshots at window starts when the dev score improved
    (docs/method.md#teacher), the distillation loss while the window is open, and the end."""

    def __init__(self, cfg: Any, generator: torch.Generator) -> None:
        self.cfg = cfg
        self.generator = generator  # shared with rank growth: one random stream per run
        self.teacher: TeacherSnapshot | None = None
        self.transform: LoRALinear | None = None  # Tr, alive during distillation
        self.best_metric = -math.inf
        self.log: list[dict] = []  # one record per window start that evaluated a possible teacher

    def start(self, d_model: int, device: torch.device, dtype: torch.dtype,
              reads: torch.Tensor | None = None) -> LoRALinear:
        """Tr as the identity on d_model dims; with `reads`, only those input columns are kept:
        a student narrower than a teacher with its own backbone maps its dims into the teacher's."""
        self.transform = lora_layer_transform(d_model, self.cfg.r, self.cfg.lora_alpha, device, dtype)
        if reads is not None:
            # Sorted reads keep W the identity when no dim was cut (`place` counts on it).
            if not bool((reads[1:] > reads[:-1]).all()):
                raise ValueError("Tr's reads must be in increasing order")
            prune_linear_in(self.transform, reads)  # (d_t, d_t) -> (d_t, d_s), W_A (r, d_s)
        return self.transform

    def wants_snapshot(self) -> bool:
        """Whether a window start should evaluate the student as a possible new teacher: never
        without distillation (--no-distill), where a snapshot would only hold a frozen copy of the
        backbone after the next compaction and cost a dev evaluation, and teach nothing."""
        if not self.cfg.distill:
            return False
        return self.teacher is None or self.cfg.teacher_refresh != "once"

    def improves(self, value: float) -> bool:
        return self.teacher is None or value > self.best_metric

    def snapshot(self, model: nn.Module, value: float) -> None:
        self.teacher = TeacherSnapshot(model)
        self.best_metric = value

    def student_dims_in_teacher(self, student_hidden: list[int]) -> torch.Tensor | None:
        """Where each of the student's hidden dims (original numbering) sits among the teacher's,
        when the teacher has its own, wider backbone; None while they share one."""
        teacher = self.teacher
        if teacher is None or teacher.backbone is None:
            return None
        position = {dim: i for i, dim in enumerate(teacher.structure.hidden)}
        return torch.as_tensor([position[d] for d in student_hidden], dtype=torch.long)

    def targets(self, model: nn.Module, batch: dict, masks: Any, salience: Any, spec: Any) -> TeacherTargets:
        """The teacher's forward on this step's batch, reduced to `TeacherTargets`. The training
        loop asks for it before the student's forward (APTCallback.on_step_begin): then the
        teacher's activations come and go while the student's are not yet alive, and only the
        targets stay, which lowers the step's peak memory."""
        weight = next(model.parameters())
        dtype, half, length = weight.dtype, self._half_precision(weight.dtype), None
        if half is not None:
            batch, length = padded_to_bucket(batch)
        with torch.autocast(device_type=weight.device.type, dtype=half) if half else contextlib.nullcontext():
            teacher = self.teacher.forward(model, batch, masks, salience)
        rms = spec.norm_kind == "rms"
        hidden, picks = [], []
        for t_hidden in spec.stack_hidden_states(teacher):
            drawn = sample_teacher_layers(len(t_hidden), self.generator)
            # [:, :length] drops the bucket's padding; .to(dtype): under autocast some outputs are
            # half precision, and the losses run in the model's dtype (no-ops otherwise)
            cut = {i: t_hidden[i][:, :length].to(dtype) for i in drawn}  # each (B, T, d_t)
            hidden.append({i: rms_normalise(h) if rms else h for i, h in cut.items()})
            picks.append(drawn)
        return TeacherTargets(_prediction_only(teacher, dtype, length), hidden, picks)

    def _half_precision(self, dtype: torch.dtype) -> torch.dtype | None:
        """The autocast dtype of the teacher's forward (teacher_precision), or None: exact."""
        half = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(self.cfg.teacher_precision)
        return None if half == dtype else half

    def loss(self, model: nn.Module, batch: dict, outputs: Any, masks: Any, salience: Any,
             alive: list[list[bool]], spec: Any, targets: TeacherTargets | None = None) -> torch.Tensor:
        """λ_pred · L_pred + λ_layer · L_layer against the teacher, for this step's student outputs.
        L_layer is averaged over the stacks (an encoder-decoder's encoder and decoder, each with
        its own sampled layers); an RMS-normed family compares RMS-normalised hidden states
        (docs/method.md#distillation-losses). `targets` is this step's `targets(...)`, computed
        earlier; without it the teacher runs now (the same figures, a higher peak memory)."""
        cfg = self.cfg
        if targets is None:
            targets = self.targets(model, batch, masks, salience, spec)
        l_pred = output_prediction_loss(targets.prediction, outputs, cfg.distill_temperature)
        rms = spec.norm_kind == "rms"
        # the student's kept width, on the device (no host read): its masked dims hold zeros
        width = (masks.hidden != 0).sum().to(outputs.logits.dtype) if rms and masks is not None else None
        terms = []
        for t_hidden, picks, s_hidden, alive_here in zip(targets.hidden, targets.picks,
                                                         spec.stack_hidden_states(outputs), alive):
            if rms:
                s_hidden = [rms_normalise(h, width=width) for h in s_hidden]
            terms.append(mapped_layer_loss(t_hidden, s_hidden, picks, alive_here, self.transform))
        l_layer = torch.stack(terms).mean()
        return cfg.lambda_pred * l_pred + cfg.lambda_layer * l_layer

    def grow_transform(self, factor: float) -> Survivors:
        """Tr's rank grows with the adapters' budget (docs/method.md#rank-growth)."""
        tr, cfg = self.transform, self.cfg
        if tr is None:
            return {}
        new_r = math.floor(tr.r * factor)
        if not tr.r < new_r < 2 * cfg.max_rank:
            return {}
        old_a, old_b = tr.grow_rank(new_r, cfg.new_rank_init, self.generator)
        return {tr.lora_A: (old_a, pad_rows(new_r)), tr.lora_B: (old_b, pad_cols(new_r))}

    def trainable(self) -> list[nn.Parameter]:
        """Tr's trainable tensors: they live outside the model, so the optimizer takes them extra."""
        return [p for p in self.transform.parameters() if p.requires_grad] if self.transform else []

    def end(self) -> None:
        self.teacher, self.transform = None, None
