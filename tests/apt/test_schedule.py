"""APT's timeline (docs/method.md#schedule, docs/method.md#learning-rate-schedule): the paper's
worked schedules, the relative mode for short runs, its validation, and the three-segment
learning-rate schedule."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import replace

import pytest
import torch

from aptune.errors import AptuneError
from aptune.apt.schedule import (PruningSchedule, ScheduleSettings, SegmentedSchedule, build_schedule,
                             minimum_steps)

torch.set_num_threads(1)

SST2 = ScheduleSettings(total_steps=84_200, steps_per_epoch=2105, target_kept=0.4, mode="absolute")
MNLI = ScheduleSettings(total_steps=490_880, steps_per_epoch=12_272, target_kept=0.4, mode="absolute")
DELTA0 = 663_552  # RoBERTa-base δ_0 (docs/method.md#tuning-parameter-count)

# The paper-scale RoBERTa-base SST2 schedule (docs/method.md#schedule): (p_k, ρ(p_k), Δ_k, μ(p_k))
SST2_TABLE = [
    (811, 1.0000, 862_455, 0.10),
    (1423, 1.0000, 1_061_683, 0.20),
    (2034, 1.0000, 1_260_586, 0.30),
    (2646, 0.8596, 1_459_814, 0.40),
    (3257, 0.6661, 1_658_717, 0.50),
    (3869, 0.5362, 1_857_946, 0.60),
    (4480, 0.4575, 2_056_848, 0.70),
    (5092, 0.4170, 2_256_077, 0.80),
    (5703, 0.4021, 2_454_980, 0.90),
    (6315, 0.4000, 2_654_208, 1.00),
]
# its Δ_k/Δ_{k-1} column
SST2_RATIOS = [1.2998, 1.2310, 1.1873, 1.1580, 1.1363, 1.1201, 1.1071, 1.0969, 1.0882, 1.0812]


@pytest.fixture(scope="module")
def sst2() -> PruningSchedule:
    sched = build_schedule(SST2)
    sched.set_tuning_budget(DELTA0, 4.0)
    return sched


# -- absolute mode: the paper's worked tables --------------------------------------------------
def test_sst2_points_and_landmarks(sst2):
    assert sst2.points == [p for p, *_ in SST2_TABLE]
    assert (sst2.start, sst2.end, sst2.warmup_end) == (200, 6315, 2305)
    assert sst2.windows == [200] * 10
    assert sst2.mask_steps == [0.01] * 10
    assert sst2.total_steps == 84_200


@pytest.mark.parametrize("k, row", list(enumerate(SST2_TABLE)))
def test_sst2_kept_budget_mu(sst2, k, row):
    point, kept, budget, mu = row
    assert round(sst2.kept[k], 4) == kept
    assert round(sst2.budgets[k]) == budget
    assert round(sst2.mu(point), 2) == mu


def test_sst2_budget_ratios(sst2):
    budgets = [DELTA0, *sst2.budgets]
    ratios = [round(b / a, 4) for a, b in zip(budgets[:-1], budgets[1:])]
    assert ratios == SST2_RATIOS
    assert sst2.budgets[-1] == pytest.approx(4 * DELTA0)


def test_sst2_distillation_window(sst2):
    assert (sst2.distill_start, sst2.distill_end) == (2647, 44_747)
    assert sst2.total_steps - sst2.distill_end == 39_453  # phase 2
    assert not sst2.in_distillation(2646)
    assert sst2.in_distillation(2647) and sst2.in_distillation(44_746)
    assert not sst2.in_distillation(44_747)


def test_sst2_windows_and_teacher_checks(sst2):
    # Only points with ρ < 1 open a decay window; the first one starts at 2446 (docs/method.md#overview).
    assert sst2.window_starts() == {2446: 3, 3057: 4, 3669: 5, 4280: 6, 4892: 7, 5503: 8, 6115: 9}
    assert sst2.window_of(2445) is None
    assert sst2.window_of(2446) == 3 and sst2.window_of(2645) == 3
    assert sst2.window_of(2646) is None
    assert sst2.window_of(1000) is None  # window of point 2 (ρ = 1) does not count
    assert sst2.point_index(2646) == 3 and sst2.point_index(2647) is None


def test_mnli_points():
    sched = build_schedule(MNLI)
    assert sched.points == [3861, 7523, 11184, 14846, 18508, 22169, 25831, 29492, 33154, 36816]
    assert [round(r, 4) for r in sched.kept] == [1.0, 1.0, 1.0, 0.8410, 0.6552, 0.5307, 0.4551,
                                                   0.4163, 0.4020, 0.4000]
    assert (sched.distill_start, sched.distill_end) == (14_847, 260_287)
    assert sched.total_steps == 490_880


# -- μ --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("step, expected", [
    (0, 0.0), (199, 0.0), (200, 0.0), (201, 1 / 6115), (811, 611 / 6115), (3257.5, 0.5),
    (6315, 1.0), (6316, 1.0), (50_000, 1.0),
])
def test_mu_hand_values(sst2, step, expected):
    assert sst2.mu(step) == pytest.approx(expected, abs=1e-12)


def test_mu_is_linear_between_start_and_end(sst2):
    values = [sst2.mu(t) for t in range(200, 6316)]
    diffs = {round(b - a, 12) for a, b in zip(values[:-1], values[1:])}
    assert diffs == {round(1 / 6115, 12)}


def test_mu_ceiling_scales_the_ramp_and_keeps_the_task_loss():
    """distill_weight_max caps μ: the ramp ends at the ceiling at p_K, so the task loss keeps
    weight 1 - μ_max from there until distillation ends."""
    s = ScheduleSettings(total_steps=5000, steps_per_epoch=100, target_kept=0.4, mode="relative")
    full = build_schedule(s)
    half = build_schedule(dataclasses.replace(s, distill_weight_max=0.5))
    assert full.mu(full.end) == 1.0 and half.mu(half.end) == 0.5 and half.mu(4000) == 0.5
    assert all(half.mu(t) == pytest.approx(0.5 * full.mu(t)) for t in range(0, 5000, 37))
    assert half.as_dict()["mu_max"] == 0.5


# -- relative mode ---------------------------------------------------------------------------
def test_relative_mode_T5000():
    s = ScheduleSettings(total_steps=5000, steps_per_epoch=100, target_kept=0.4, mode="relative")
    sched = build_schedule(s)
    assert (sched.start, sched.end) == (100, 3500)  # 2 % and 70 % of T
    assert sched.warmup_end == 100 + math.floor(3400 / 3)
    assert len(sched.points) == 10
    assert sched.points == [math.floor(100 + 3400 * k / 10) for k in range(1, 11)]
    gaps = [b - a for a, b in zip([sched.start, *sched.points[:-1]], sched.points)]
    assert sched.windows == [min(200, g // 2) for g in gaps] == [170] * 10
    assert sched.mask_steps == pytest.approx([2 / w for w in sched.windows])
    assert sched.kept[-1] == pytest.approx(0.4)
    assert sched.kept[:3] == [1.0, 1.0, 1.0]  # points inside the sparsity warm-up
    assert sched.distill_end == 4000  # 80 % of T
    assert sched.distill_start == sched.points[3] + 1  # after the first ρ < 1 point


def test_relative_window_is_capped_at_200():
    s = ScheduleSettings(total_steps=100_000, steps_per_epoch=1000, target_kept=0.4, mode="relative")
    sched = build_schedule(s)
    assert sched.windows == [200] * 10
    assert sched.mask_steps == pytest.approx([0.01] * 10)


def test_short_run_uses_fewer_points():
    s = ScheduleSettings(total_steps=60, steps_per_epoch=13, target_kept=0.4, mode="relative")
    sched = build_schedule(s)
    assert 3 <= len(sched.points) < 10
    assert sched.kept[-1] == pytest.approx(0.4)
    assert sched.points[-1] == sched.end
    assert sched.points[0] > sched.start
    assert min(sched.windows) >= 4
    assert all(a < b for a, b in zip(sched.points[:-1], sched.points[1:]))
    assert all(a >= b for a, b in zip(sched.kept[:-1], sched.kept[1:]))  # ρ never rises


def test_too_short_run_names_the_minimum():
    s = ScheduleSettings(total_steps=20, steps_per_epoch=13, target_kept=0.4, mode="relative")
    with pytest.raises(AptuneError) as err:
        build_schedule(s)
    fix = err.value.fix or ""
    numbers = [int(w) for w in fix.replace("(", " ").split() if w.isdigit()]
    assert numbers, fix
    need = numbers[0]
    assert need == minimum_steps(s)
    build_schedule(replace(s, total_steps=need))  # the stated minimum really works
    with pytest.raises(AptuneError):
        build_schedule(replace(s, total_steps=need - 1))  # and it is the smallest
    # Every run at least that long builds (the minimum is a real threshold, not a lucky value).
    for total in range(need, need + 300, 7):
        build_schedule(replace(s, total_steps=total), explain=False)


def test_absolute_points_closer_than_window_raise():
    # E = 100: points 10 steps apart, far below the 200-step decay window
    # (docs/method.md#pitfalls-of-the-original-code).
    s = ScheduleSettings(total_steps=4000, steps_per_epoch=100, target_kept=0.4, mode="absolute")
    with pytest.raises(AptuneError, match="10 steps apart but the decay window needs 200"):
        build_schedule(s)


def test_absolute_window_too_short_for_mask_step_raises():
    # 1/0.01 + 2 = 102 steps are needed to reach 0; a 50-step window cannot.
    s = replace(SST2, mask_decay_window=50)
    with pytest.raises(AptuneError):
        build_schedule(s)


def test_absolute_pruning_beyond_the_run_raises():
    with pytest.raises(AptuneError):
        build_schedule(replace(SST2, total_steps=5000))  # p_K = 6315 > T


def test_no_distillation_and_no_pruning_settings():
    no_d = build_schedule(replace(SST2, distill=False))
    assert no_d.distill_start is None and no_d.distill_end is None
    assert no_d.kept == build_schedule(SST2).kept
    no_p = build_schedule(replace(SST2, prune=False))
    assert no_p.kept == [1.0] * 10
    assert no_p.distill_start is None and no_p.window_starts() == {}


# -- learning rate -------------------------------------------------------------------------
# T = 100, s_d = 20, s_e = 60, η = 1:
#   segment 1 [0, 20):  n = 100, w = 6,  peak 1
#   segment 2 [20, 60): n = 40,  w = 3,  peak 1
#   segment 3 [60, 100): n = 40, w = 3,  peak 0.1
LR = SegmentedSchedule(peak=1.0, total_steps=100, warmup_ratio=0.06, distill_start=20,
                       distill_end=60, post_distill_factor=0.1)


@pytest.mark.parametrize("step, expected", [
    (0, 0.0), (3, 0.5), (6, 1.0), (10, 90 / 94), (19, 81 / 94),  # segment 1
    (20, 0.0), (21, 1 / 3), (23, 1.0), (40, 20 / 37), (59, 1 / 37),  # segment 2
    (60, 0.0), (61, 0.1 / 3), (63, 0.1), (80, 0.1 * 20 / 37), (99, 0.1 / 37), (100, 0.0),  # segment 3
])
def test_segmented_lr_hand_values(step, expected):
    assert LR(step) == pytest.approx(expected, abs=1e-12)


def test_segmented_lr_sst2_values(sst2):
    eta = 2e-4
    lr = SegmentedSchedule(eta, 84_200, 0.06, sst2.distill_start, sst2.distill_end, 0.1)
    # Segment 1: warm-up ⌈0.06·84200⌉ = 5052, cut at s_d = 2647 while still warming up.
    assert lr(2646) == pytest.approx(eta * 2646 / 5052)
    # Segment 2: D = 42100, warm-up 2526.
    assert lr(2647) == 0.0
    assert lr(2647 + 2526) == pytest.approx(eta)
    assert lr(2647 + 2526 + 1) == pytest.approx(eta * (42_100 - 2527) / (42_100 - 2526))
    # Segment 3: R = 39453, warm-up ⌈2367.18⌉ = 2368, peak 0.1·η.
    assert lr(44_747) == 0.0
    assert lr(44_747 + 1184) == pytest.approx(0.1 * eta * 1184 / 2368)
    assert lr(44_747 + 2368) == pytest.approx(0.1 * eta)
    assert lr(84_199) == pytest.approx(0.1 * eta / (39_453 - 2368))


def test_single_segment_without_distillation():
    lr = SegmentedSchedule(1.0, 100, 0.06)
    assert [lr(t) for t in (0, 3, 6, 53, 100)] == pytest.approx([0.0, 0.5, 1.0, 0.5, 0.0])


def test_segmented_lr_is_a_pure_function_of_the_step():
    forward = [LR(t) for t in range(101)]
    backward = [LR(t) for t in reversed(range(101))][::-1]
    shuffled_steps = torch.randperm(101, generator=torch.Generator().manual_seed(0)).tolist()
    shuffled = dict((t, LR(t)) for t in shuffled_steps)
    assert forward == backward == [shuffled[t] for t in range(101)]
    assert LR == SegmentedSchedule(1.0, 100, 0.06, 20, 60, 0.1)  # no hidden state


# -- distillation defaults by run length (docs/method.md#distillation-on-short-runs) ---------------
def test_short_runs_default_to_half_distillation_and_one_decay():
    from aptune.apt.config import APTConfig
    from aptune.apt.schedule import resolve_distillation_defaults, settings_for

    cfg = APTConfig(schedule_mode="auto")
    line = resolve_distillation_defaults(cfg, total_steps=1250)
    assert (cfg.lr_schedule, cfg.distill_weight_max) == ("single", 0.5)
    assert "--lr-schedule single" in line and "--distill-weight-max 0.5" in line and "short run" in line
    assert resolve_distillation_defaults(cfg, total_steps=1250) is None  # resolved once
    paper_length = APTConfig(schedule_mode="auto")
    resolve_distillation_defaults(paper_length, total_steps=84_200)
    assert (paper_length.lr_schedule, paper_length.distill_weight_max) == ("segmented", 1.0)
    absolute = APTConfig(schedule_mode="absolute")  # the paper's constants, whatever the length
    resolve_distillation_defaults(absolute, total_steps=1250)
    assert (absolute.lr_schedule, absolute.distill_weight_max) == ("segmented", 1.0)
    library = APTConfig(schedule_mode="relative")  # get_apt_model users: resolved by the callback
    assert settings_for(library, 5000, 100).distill_weight_max == 0.5 and library.lr_schedule == "single"


def test_given_distillation_values_and_paper_defaults_win():
    from aptune.apt.config import APTConfig
    from aptune.apt.schedule import resolve_distillation_defaults
    from aptune.config import TrainConfig

    given = APTConfig(schedule_mode="relative", lr_schedule="segmented")
    line = resolve_distillation_defaults(given, total_steps=1250)
    assert (given.lr_schedule, given.distill_weight_max) == ("segmented", 0.5)
    assert "--distill-weight-max 0.5" in line and "lr-schedule" not in line
    both = APTConfig(schedule_mode="relative", lr_schedule="single", distill_weight_max=1.0)
    assert resolve_distillation_defaults(both, total_steps=1250) is None and both.distill_weight_max == 1.0
    paper = TrainConfig(task="sst2", method="apt", schedule_mode="relative", paper_defaults=True)
    line = resolve_distillation_defaults(paper, total_steps=1250)
    assert (paper.lr_schedule, paper.distill_weight_max) == ("segmented", 1.0) and "--paper-defaults" in line
