"""APT's timeline: pruning points, kept-ratio targets, decay windows, tuning budgets, μ and the
learning-rate segments (docs/method.md#schedule, docs/method.md#learning-rate-schedule).

Everything is a pure function of the step, computed once at start-up and logged.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import AptuneError
from ..fields import flag


@dataclass(frozen=True)
class ScheduleSettings:
    total_steps: int  # T
    steps_per_epoch: int  # E
    target_kept: float  # ρ_T
    num_prunings: int = 10  # K
    mode: str = "relative"  # or "absolute" (the paper's constants)
    # absolute mode (paper)
    pruning_start_step: int = 200
    pruning_end_epoch: float = 3.0
    sparsity_warmup_epochs: float = 1.0
    mask_decay_window: int = 200
    mask_decay_step: float = 0.01
    distill_epochs: float = 20.0
    # relative mode (docs/method.md#short-runs): fractions of T
    pruning_start_frac: float = 0.02
    pruning_end_frac: float = 0.70
    sparsity_warmup_frac: float = 1 / 3  # of the pruning window
    distill_end_frac: float = 0.80
    max_decay_window: int = 200
    distill: bool = True
    prune: bool = True
    pruning_schedule: str = "cubic"  # cubic | linear | once
    distill_weight_max: float = 1.0  # μ's ceiling (1: pure distillation from p_K, the paper)


PAPER_STEPS = 40_000  # below this many steps a run counts as short: the relative schedule

# Distillation's defaults by run length (docs/method.md#distillation-on-short-runs). The paper's
# pure distillation from p_K and restarted learning rate suit its tens of thousands of steps; on
# short runs the student keeps half its weight on the task loss and the rate decays once.
PAPER_DISTILLATION = {"lr_schedule": "segmented", "distill_weight_max": 1.0}
SHORT_RUN_DISTILLATION = {"lr_schedule": "single", "distill_weight_max": 0.5}


def resolved_mode(cfg: Any, total_steps: int) -> str:
    """relative or absolute: what schedule_mode `auto` means for a run of `total_steps`."""
    if cfg.schedule_mode != "auto":
        return cfg.schedule_mode
    return "absolute" if total_steps >= PAPER_STEPS else "relative"


def resolve_distillation_defaults(cfg: Any, total_steps: int) -> str | None:
    """Fill lr_schedule (auto) and distill_weight_max (None) of `cfg` for a run of `total_steps`;
    return the start-up line that says what was chosen, or None when both were given."""
    unset = [name for name in SHORT_RUN_DISTILLATION if getattr(cfg, name, None) in (None, "auto")]
    if not unset:
        return None
    paper_defaults = getattr(cfg, "paper_defaults", False)
    short = resolved_mode(cfg, total_steps) == "relative" and not paper_defaults
    chosen = SHORT_RUN_DISTILLATION if short else PAPER_DISTILLATION
    for name in unset:
        setattr(cfg, name, chosen[name])
    values = ", ".join(f"{flag(name)} {chosen[name]}" for name in unset)
    why = ("a short run (the relative schedule); --paper-defaults keeps the paper's" if short else
           "--paper-defaults" if paper_defaults else "a run of paper length")
    return f"APT distillation defaults: {values}: {why} (docs/method.md#distillation-on-short-runs)"


def settings_for(cfg: Any, total_steps: int, steps_per_epoch: int) -> ScheduleSettings:
    """The schedule settings of an APT config for a run of `total_steps` (docs/method.md#short-runs)."""
    resolve_distillation_defaults(cfg, total_steps)  # a no-op once the pipeline has resolved them
    return ScheduleSettings(
        total_steps=total_steps, steps_per_epoch=steps_per_epoch, target_kept=1 - cfg.sparsity,
        num_prunings=cfg.num_prunings, mode=resolved_mode(cfg, total_steps),
        pruning_start_step=cfg.pruning_start_step,
        pruning_end_epoch=cfg.pruning_end_epoch, sparsity_warmup_epochs=cfg.sparsity_warmup_epochs,
        mask_decay_window=cfg.mask_decay_window, mask_decay_step=cfg.mask_decay_step,
        distill_epochs=cfg.distill_epochs, pruning_start_frac=cfg.pruning_start_frac,
        pruning_end_frac=cfg.pruning_end_frac, sparsity_warmup_frac=cfg.sparsity_warmup_frac,
        distill_end_frac=cfg.distill_end_frac, distill=cfg.distill, prune=cfg.prune,
        pruning_schedule=cfg.pruning_schedule, distill_weight_max=cfg.distill_weight_max)


@dataclass
class PruningSchedule:
    start: int  # salience, μ and budget ramps begin
    end: int  # p_K
    warmup_end: int  # ρ held at 1 until here
    points: list[int]
    kept: list[float]  # ρ(p_k)
    windows: list[int]  # W for each point
    mask_steps: list[float]  # α for each point
    distill_start: int | None  # s_d
    distill_end: int | None  # s_e
    total_steps: int
    budgets: list[float] = field(default_factory=list)  # Δ_k, filled by set_tuning_budget
    mu_max: float = 1.0  # μ's ceiling

    # -- queries used every step --------------------------------------------------------------
    def point_index(self, step: int) -> int | None:
        """k (0-based) if `step` is the pruning point p_k, else None."""
        return self.points.index(step) if step in self.points else None

    def window_of(self, step: int) -> int | None:
        """The 0-based point whose decay window [p_k - W, p_k) holds `step`, if ρ there < 1."""
        for k, (p, w) in enumerate(zip(self.points, self.windows)):
            if p - w <= step < p and self.kept[k] < 1.0:
                return k
        return None

    def window_starts(self) -> dict[int, int]:
        """Step -> point index, for windows with ρ < 1 (teacher refresh checks run there)."""
        return {p - w: k for k, (p, w) in enumerate(zip(self.points, self.windows)) if self.kept[k] < 1}

    def mu(self, step: int) -> float:
        """Distillation weight μ: 0 before the start, then linear to μ_max (1 in the paper) at p_K
        (docs/method.md#distillation-weight)."""
        if step < self.start:
            return 0.0
        return self.mu_max * min(1.0, (step - self.start) / max(1, self.end - self.start))

    def in_distillation(self, step: int) -> bool:
        return self.distill_start is not None and self.distill_start <= step < self.distill_end

    def set_tuning_budget(self, delta0: float, ratio: float) -> None:
        """Δ_k rises linearly from δ_0 at `start` to ratio·δ_0 at p_K (docs/method.md#rank-growth)."""
        span = max(1, self.end - self.start)
        self.budgets = [delta0 + (ratio - 1) * delta0 * (p - self.start) / span for p in self.points]

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        rows = [f"  p{k + 1:<2} step {p:>6}  kept {r:.4f}  window {w:>3} (α {a:.4f})  μ {self.mu(p):.2f}"
                + (f"  Δ {self.budgets[k]:,.0f}" if self.budgets else "")
                for k, (p, r, w, a) in enumerate(zip(self.points, self.kept, self.windows, self.mask_steps))]
        head = (f"APT schedule: T={self.total_steps}, salience from step {self.start}, "
                f"pruning ends at {self.end}, ρ held at 1 until {self.warmup_end}")
        if self.distill_start is not None:
            head += f", distillation [{self.distill_start}, {self.distill_end})"
        return "\n".join([head, *rows])


def kept_ratio_at(p: int, s: ScheduleSettings, warmup_end: int, end: int) -> float:
    if s.pruning_schedule == "once":
        return s.target_kept if p >= end else 1.0
    frac = (end - p) / max(1, end - warmup_end)
    frac = min(1.0, max(0.0, frac))
    shape = frac ** 3 if s.pruning_schedule == "cubic" else frac
    return min(1.0, s.target_kept + (1 - s.target_kept) * shape)


def build_schedule(s: ScheduleSettings, explain: bool = True) -> PruningSchedule:
    T, E = s.total_steps, s.steps_per_epoch
    if s.mode == "absolute":
        start = s.pruning_start_step
        end = math.floor(s.pruning_end_epoch * E)
        warmup_end = start + math.floor(s.sparsity_warmup_epochs * E)
        k = s.num_prunings
    elif s.mode == "relative":
        start = math.floor(s.pruning_start_frac * T)
        end = math.floor(s.pruning_end_frac * T)
        warmup_end = start + math.floor(s.sparsity_warmup_frac * (end - start))
        k = s.num_prunings
        while k > 3 and (end - start) // k < 8:  # fewer points when the window is short
            k -= 1
    else:
        raise AptuneError(f"unknown schedule_mode '{s.mode}'", "use 'relative' or 'absolute'")
    points = [math.floor(start + (end - start) * i / k) for i in range(1, k + 1)]
    gaps = [b - a for a, b in zip([start, *points[:-1]], points)]
    if s.mode == "absolute":
        windows = [s.mask_decay_window] * k
        steps = [s.mask_decay_step] * k
    else:
        windows = [min(s.max_decay_window, g // 2) for g in gaps]
        steps = [2.0 / w if w > 0 else 1.0 for w in windows]
    _validate(s, start, end, points, windows, steps, gaps, explain)
    kept = [kept_ratio_at(p, s, warmup_end, end) if s.prune else 1.0 for p in points]
    d_start = d_end = None
    if s.distill and s.prune:
        first_real = next((p for p, r in zip(points, kept) if r < 1.0), None)
        if first_real is not None:
            d_start = first_real + 1
            d_end = (d_start + math.floor(s.distill_epochs * E) if s.mode == "absolute"
                     else math.floor(s.distill_end_frac * T))
            d_end = min(max(d_end, d_start + 1), T)
    return PruningSchedule(start, end, warmup_end, points, kept, windows, steps, d_start, d_end, T,
                           mu_max=s.distill_weight_max)


def minimum_steps(s: ScheduleSettings) -> int:
    """The fewest total steps for which the relative schedule is valid (for error messages)."""
    from dataclasses import replace

    for total in range(8, 100_000):
        try:
            build_schedule(replace(s, total_steps=total), explain=False)
            return total
        except AptuneError:
            continue
    return 100_000


def _validate(s, start, end, points, windows, steps, gaps, explain: bool = True) -> None:
    if end > s.total_steps or points[-1] > s.total_steps:
        raise AptuneError(f"the pruning window ends at step {end}, after the run's {s.total_steps} steps",
                          "train for more epochs or use schedule_mode: relative")
    if s.mode == "relative" and (min(windows) < 4 or points[0] <= start):
        if not explain:
            raise AptuneError("too short")
        need = minimum_steps(s)
        raise AptuneError(
            f"the run is too short for APT's schedule: {s.total_steps} steps give decay windows of "
            f"{min(windows)} steps (4 needed)",
            f"train for at least {need} steps ({need} batches: more epochs or more samples)")
    if s.mode == "absolute":
        need = math.ceil(1 / s.mask_decay_step) + 2
        if min(gaps) < s.mask_decay_window or s.mask_decay_window < need:
            raise AptuneError(
                f"pruning points are {min(gaps)} steps apart but the decay window needs "
                f"{max(s.mask_decay_window, need)} (docs/method.md#schedule)",
                "use schedule_mode: relative, or more steps per pruning window")


@dataclass(frozen=True)
class SegmentedSchedule:
    """The three LR segments: [0, s_d) over T, [s_d, s_e), [s_e, T) at a lower peak
    (docs/method.md#learning-rate-schedule).

    A pure function of the step, so optimizer rebuilds never restart or detach it.
    """

    peak: float
    total_steps: int
    warmup_ratio: float
    distill_start: int | None = None
    distill_end: int | None = None
    post_distill_factor: float = 0.1

    @staticmethod
    def _segment(u: int, n: int, warmup: int, peak: float) -> float:
        if u < warmup:
            return peak * u / warmup
        return peak * max(0.0, (n - u) / max(1, n - warmup))

    def __call__(self, step: int) -> float:
        T, r = self.total_steps, self.warmup_ratio
        if self.distill_start is None or step < self.distill_start:
            return self._segment(step, T, math.ceil(r * T), self.peak)
        if step < self.distill_end:
            n = self.distill_end - self.distill_start
            return self._segment(step - self.distill_start, n, math.ceil(r * n), self.peak)
        n = T - self.distill_end
        return self._segment(step - self.distill_end, n, math.ceil(r * n),
                             self.peak * self.post_distill_factor)
