"""The learning-rate schedule and optimizer rebuilds that keep surviving state."""

from __future__ import annotations

import math

import pytest
import torch

from aptune.train.optim import LinearWarmupDecay, build_optimizer, param_groups, rebuild_optimizer


@pytest.mark.parametrize("step, expected", [(0, 0.0), (3, 0.5), (6, 1.0), (53, 0.5), (100, 0.0),
                                            (150, 0.0)])
def test_linear_warmup_decay(step, expected):
    sched = LinearWarmupDecay.from_ratio(peak=1.0, total_steps=100, warmup_ratio=0.06)
    assert sched.warmup_steps == math.ceil(0.06 * 100) == 6
    assert sched(step) == pytest.approx(expected)


def test_no_optimizer_state_for_frozen_params():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    model[0].weight.requires_grad_(False)
    model[0].bias.requires_grad_(False)
    groups = param_groups(model, 0.1)
    ids = {id(p) for g in groups for p in g["params"]}
    assert id(model[0].weight) not in ids and id(model[0].bias) not in ids
    decay = {id(p) for p in groups[0]["params"]}
    assert decay == {id(model[2].weight)}  # biases and norms get no weight decay


def test_rebuild_keeps_state_of_surviving_rows():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.Linear(6, 2))
    opt = build_optimizer(model, lr=1e-2, weight_decay=0.0)
    for _ in range(3):
        model(torch.randn(5, 3)).pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
    old_w = model[0].weight
    old_state = {k: v.clone() for k, v in opt.state[old_w].items()}
    keep = torch.tensor([0, 2, 5])
    shrunk = torch.nn.Linear(3, 3)
    with torch.no_grad():
        shrunk.weight.copy_(old_w[keep])
        shrunk.bias.copy_(model[0].bias[keep])
    old_bias, old_out = model[0].bias, model[1].weight
    model[0] = shrunk
    new_out = torch.nn.Linear(3, 2)
    model[1] = new_out
    survivors = {shrunk.weight: (old_w, lambda t: t[keep]),
                 shrunk.bias: (old_bias, lambda t: t[keep]),
                 new_out.weight: (old_out, lambda t: t[:, keep])}
    new = rebuild_optimizer(opt, model, 0.0, survivors)
    assert torch.equal(new.state[shrunk.weight]["exp_avg"], old_state["exp_avg"][keep])
    assert torch.equal(new.state[shrunk.weight]["exp_avg_sq"], old_state["exp_avg_sq"][keep])
    assert float(new.state[shrunk.weight]["step"]) == 3.0
    assert new_out.bias not in new.state  # no survivor given: fresh state
    model(torch.randn(5, 3)).sum().backward()
    new.step()  # the rebuilt optimizer steps without shape errors
