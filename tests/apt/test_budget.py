"""The parameter budget: C, block costs (docs/method.md#model-size) and the keep-set search
(docs/method.md#keep-set-search), checked against the paper's RoBERTa-base constants and a brute
force over density-sorted prefixes."""

from __future__ import annotations

import pytest
import torch

from aptune.apt.budget import BLOCK_TYPES, Counts, round_down_keep_set, select_keep_set

torch.set_num_threads(1)

ROBERTA = Counts(heads=144, neurons=36_864, hidden=768, head_dim=64)


# -- counts and costs ------------------------------------------------------------------------
def test_roberta_base_size_and_costs():
    assert ROBERTA.size == 84_934_656
    assert ROBERTA.costs() == {"head": 196_608, "neuron": 1_536, "hidden": 110_592}
    assert int(0.4 * ROBERTA.size) == 33_973_862  # the target at ρ_T = 0.4


def test_t5_gated_size():
    t5 = Counts(heads=432, neurons=49_152, hidden=768, head_dim=64, ffn_factor=3)
    assert t5.size == 198_180_864
    assert t5.costs() == {"head": 196_608, "neuron": 2_304, "hidden": 258_048}


@pytest.mark.parametrize("heads, neurons, hidden", [(144, 36_864, 768), (100, 20_000, 500),
                                                    (0, 10, 8), (5, 0, 8), (3, 7, 0)])
def test_costs_are_marginal_sizes(heads, neurons, hidden):
    """Removing one block of a type lowers C by exactly that type's cost (at fixed other counts)."""
    c = Counts(heads, neurons, hidden, 64)
    costs = c.costs()
    if heads:
        assert c.size - Counts(heads - 1, neurons, hidden, 64).size == costs["head"]
    if neurons:
        assert c.size - Counts(heads, neurons - 1, hidden, 64).size == costs["neuron"]
    if hidden:
        assert c.size - Counts(heads, neurons, hidden - 1, 64).size == costs["hidden"]


# -- brute force ---------------------------------------------------------------------------------
def brute_force(salience, alive, counts: Counts, target: float):
    """Independent: sort alive blocks by (−density, type, index); largest prefix with C < target."""
    costs = counts.costs()
    blocks = []
    for code, t in enumerate(BLOCK_TYPES):
        for i in range(salience[t].numel()):
            if bool(alive[t][i]):
                blocks.append((-(float(salience[t][i]) / costs[t]), code, i))
    blocks.sort()
    sizes = []
    n = [0, 0, 0]
    for _, code, _ in blocks:
        n[code] += 1
        sizes.append(n[2] * (4 * counts.head_dim * n[0] + counts.ffn_factor * n[1]))
    best = 0
    for i in range(1, len(blocks) + 1):  # linear scan: every prefix
        if sizes[i - 1] < target:
            best = i
    keep = {t: sorted(i for _, c, i in blocks[:best] if c == code) for code, t in enumerate(BLOCK_TYPES)}
    prune = {t: sorted(i for _, c, i in blocks[best:] if c == code) for code, t in enumerate(BLOCK_TYPES)}
    return keep, prune, (sizes[best - 1] if best else 0), sizes


def toy(seed: int, n_heads=6, n_neurons=20, n_hidden=8, alive_p=0.8):
    g = torch.Generator().manual_seed(seed)
    salience = {"head": torch.rand(n_heads, generator=g) * 50,
                "neuron": torch.rand(n_neurons, generator=g),
                "hidden": torch.rand(n_hidden, generator=g) * 10}
    alive = {t: torch.rand(v.shape, generator=g) < alive_p for t, v in salience.items()}
    for v in alive.values():
        v[0] = True  # at least one alive block per type
    counts = Counts(int(alive["head"].sum()), int(alive["neuron"].sum()), int(alive["hidden"].sum()), 2)
    return salience, alive, counts


def as_lists(keep):
    return {t: keep[t].tolist() for t in BLOCK_TYPES}


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("fraction", [0.05, 0.2, 0.4, 0.7, 0.95])
def test_keep_set_matches_brute_force(seed, fraction):
    salience, alive, counts = toy(seed)
    target = fraction * counts.size
    result = select_keep_set(salience, alive, counts, target)
    keep, prune, size, _ = brute_force(salience, alive, counts, target)
    assert as_lists(result.keep) == keep
    assert as_lists(result.prune) == prune
    assert result.size == size
    assert result.size < target


@pytest.mark.parametrize("seed", range(8))
def test_every_target_matches_brute_force(seed):
    """Targets exactly at, just above and just below every prefix size (the strict inequality)."""
    salience, alive, counts = toy(seed, n_heads=4, n_neurons=8, n_hidden=5)
    _, _, _, sizes = brute_force(salience, alive, counts, 0)
    for s in sorted(set(sizes)):
        for target in (s, s + 0.5, s - 0.5):
            result = select_keep_set(salience, alive, counts, target)
            keep, _, size, _ = brute_force(salience, alive, counts, target)
            assert as_lists(result.keep) == keep, target
            assert result.size == size


@pytest.mark.parametrize("seed", range(8))
def test_prefix_size_is_monotone(seed):
    salience, alive, counts = toy(seed)
    _, _, _, sizes = brute_force(salience, alive, counts, 0)
    assert all(a <= b for a, b in zip(sizes[:-1], sizes[1:]))
    assert sizes[-1] == counts.size  # the full prefix is the current model
    # and the kept size returned by the search grows with the target
    kept = [select_keep_set(salience, alive, counts, f * counts.size).size for f in (0.1, 0.3, 0.5, 0.9)]
    assert kept == sorted(kept)


@pytest.mark.parametrize("seed", range(8))
def test_dead_blocks_never_appear(seed):
    salience, alive, counts = toy(seed, alive_p=0.5)
    for t in BLOCK_TYPES:
        salience[t][~alive[t]] = 1e6  # a dead block with huge salience still may not return
    for fraction in (0.1, 0.5, 2.0):
        result = select_keep_set(salience, alive, counts, fraction * counts.size)
        for t in BLOCK_TYPES:
            dead = set(torch.nonzero(~alive[t]).flatten().tolist())
            assert not dead & set(result.keep[t].tolist())
            assert not dead & set(result.prune[t].tolist())
            live = set(torch.nonzero(alive[t]).flatten().tolist())
            assert set(result.keep[t].tolist()) | set(result.prune[t].tolist()) == live
            assert not set(result.keep[t].tolist()) & set(result.prune[t].tolist())


def test_ties_are_deterministic_and_go_by_type_then_index():
    # Every block has the same density (salience ∝ cost).
    counts = Counts(heads=4, neurons=6, hidden=3, head_dim=2)
    costs = counts.costs()
    salience = {t: torch.full((n,), 3.0 * costs[t]) for t, n in
                (("head", 4), ("neuron", 6), ("hidden", 3))}
    alive = {t: torch.ones(v.numel(), dtype=torch.bool) for t, v in salience.items()}
    # Order: heads 0..3, neurons 0..5, dims 0..2. A prefix holding no hidden dim has C = 0, so the
    # largest prefix below any positive target ends before the first dim *plus* one dim:
    # 4 heads + 6 neurons + 1 dim gives C = 1·(4·2·4 + 2·6) = 44.
    first = select_keep_set(salience, alive, counts, 45)
    assert as_lists(first.keep) == {"head": [0, 1, 2, 3], "neuron": [0, 1, 2, 3, 4, 5], "hidden": [0]}
    assert first.size == 44
    again = select_keep_set(salience, alive, counts, 45)
    assert as_lists(again.keep) == as_lists(first.keep) and as_lists(again.prune) == as_lists(first.prune)
    # At a target of 44 (strict <) the dim cannot be added: nothing with C > 0 fits.
    assert select_keep_set(salience, alive, counts, 44).keep["hidden"].numel() == 0


def test_ties_within_a_type_keep_lower_indices():
    counts = Counts(heads=6, neurons=4, hidden=4, head_dim=2)
    # Neurons and dims dominate; heads all tie and come last in density.
    salience = {"head": torch.full((6,), 1.0), "neuron": torch.full((4,), 1e3),
                "hidden": torch.full((4,), 1e6)}
    alive = {t: torch.ones(v.numel(), dtype=torch.bool) for t, v in salience.items()}
    # Dims then neurons first: C = 4·(2·4) = 32; each head adds 4·(4·2) = 32.
    for n_heads in range(0, 6):
        target = 32 + 32 * n_heads + 1
        result = select_keep_set(salience, alive, counts, target)
        assert result.keep["head"].tolist() == list(range(n_heads))
    # With some heads dead the ties still go by index among the live ones.
    alive["head"] = torch.tensor([False, True, False, True, True, True])
    counts = Counts(heads=4, neurons=4, hidden=4, head_dim=2)
    result = select_keep_set(salience, alive, counts, 32 + 2 * 32 + 1)
    assert result.keep["head"].tolist() == [1, 3]
    assert result.prune["head"].tolist() == [4, 5]


@pytest.mark.parametrize("seed", range(4))
def test_permuted_equal_density_inputs(seed):
    """Permuting blocks that share a density changes nothing but the indices: the kept ones are
    always the lowest indices of each tie group."""
    g = torch.Generator().manual_seed(seed)
    counts = Counts(heads=6, neurons=20, hidden=8, head_dim=2)
    levels = torch.tensor([1.0, 2.0, 4.0])
    sal_neuron = levels[torch.randint(3, (20,), generator=g)]
    salience = {"head": torch.rand(6, generator=g) * 40, "neuron": sal_neuron,
                "hidden": torch.rand(8, generator=g) * 200}
    alive = {t: torch.ones(v.numel(), dtype=torch.bool) for t, v in salience.items()}
    target = 0.5 * counts.size
    base = select_keep_set(salience, alive, counts, target)
    perm = torch.randperm(20, generator=g)
    permuted = dict(salience, neuron=sal_neuron[perm])
    other = select_keep_set(permuted, alive, counts, target)
    assert other.size == base.size
    for t in ("head", "hidden"):
        assert other.keep[t].tolist() == base.keep[t].tolist()
    # Per density level the same number is kept, and always the lowest indices of that level.
    for level in levels:
        for sal, res in ((sal_neuron, base), (sal_neuron[perm], other)):
            members = torch.nonzero(sal == level).flatten().tolist()
            kept = [i for i in res.keep["neuron"].tolist() if i in members]
            assert kept == members[:len(kept)]
        n_base = sum(1 for i in base.keep["neuron"].tolist() if sal_neuron[i] == level)
        n_other = sum(1 for i in other.keep["neuron"].tolist() if sal_neuron[perm][i] == level)
        assert n_base == n_other


def test_target_hand_case_first_block_is_a_dim():
    counts = Counts(heads=2, neurons=2, hidden=2, head_dim=2)
    salience = {"head": torch.tensor([5.0, 1.0]), "neuron": torch.tensor([0.1, 0.2]),
                "hidden": torch.tensor([1e6, 0.1])}
    alive = {t: torch.ones(2, dtype=torch.bool) for t in BLOCK_TYPES}
    # Costs: head 16, neuron 4, dim 20. Densities: dim0 5e4, head0 0.3125, head1 0.0625,
    # neuron1 0.05, neuron0 0.025, dim1 0.005.
    # Prefix sizes d'(8h' + 2f'): [dim0] 0, [+head0] 8, [+head1] 16, [+neuron1] 18,
    # [+neuron0] 20, [+dim1] 40.
    for target, heads, neurons, hidden, size in [
        (0, [], [], [], 0), (1, [], [], [0], 0), (8, [], [], [0], 0), (9, [0], [], [0], 8),
        (18, [0, 1], [], [0], 16), (19, [0, 1], [1], [0], 18), (40, [0, 1], [0, 1], [0], 20),
        (41, [0, 1], [0, 1], [0, 1], 40)]:
        result = select_keep_set(salience, alive, counts, target)
        assert as_lists(result.keep) == {"head": heads, "neuron": neurons, "hidden": hidden}, target
        assert result.size == size


@pytest.mark.parametrize("seed", range(4))
def test_target_zero_keeps_nothing_and_huge_keeps_all_alive(seed):
    salience, alive, counts = toy(seed)
    none = select_keep_set(salience, alive, counts, 0)
    assert all(none.keep[t].numel() == 0 for t in BLOCK_TYPES)
    assert none.size == 0
    for t in BLOCK_TYPES:
        assert none.prune[t].tolist() == torch.nonzero(alive[t]).flatten().tolist()
    everything = select_keep_set(salience, alive, counts, 1e18)
    for t in BLOCK_TYPES:
        assert everything.keep[t].tolist() == torch.nonzero(alive[t]).flatten().tolist()
        assert everything.prune[t].numel() == 0
    assert everything.size == counts.size


# -- kept widths rounded to a multiple -----------------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("multiple", [2, 4, 8])
def test_rounding_cuts_each_segment_to_a_multiple_dropping_its_lowest(seed, multiple):
    """Each layer's kept neurons and the kept hidden dims end on a multiple; what goes is the
    lowest-scoring kept blocks of that segment, checked by hand-rolled selection; heads untouched."""
    salience, alive, counts = toy(seed, n_heads=6, n_neurons=60, n_hidden=24, alive_p=0.9)
    keep = select_keep_set(salience, alive, counts, 0.5 * counts.size)
    layers = [25, 15, 20]  # three layers' neurons, flattened in order
    rounded = round_down_keep_set(keep, salience, {"neuron": layers, "hidden": [24]}, multiple, counts)
    assert rounded.keep["head"].tolist() == keep.keep["head"].tolist()
    for t, sizes in (("neuron", layers), ("hidden", [24])):
        lo, expected = 0, []
        for size in sizes:
            mine = [i for i in keep.keep[t].tolist() if lo <= i < lo + size]
            by_score = sorted(mine, key=lambda i: (float(salience[t][i]), i))
            expected += by_score[len(mine) % multiple:]
            assert len(by_score[len(mine) % multiple:]) % multiple == 0
            lo += size
        assert rounded.keep[t].tolist() == sorted(expected)
        everything = sorted(rounded.keep[t].tolist() + rounded.prune[t].tolist())
        assert everything == sorted(keep.keep[t].tolist() + keep.prune[t].tolist())
    assert rounded.size == counts.formula(*(rounded.keep[t].numel() for t in BLOCK_TYPES)) <= keep.size


def test_rounding_by_one_changes_nothing():
    salience, alive, counts = toy(0)
    keep = select_keep_set(salience, alive, counts, 0.5 * counts.size)
    assert round_down_keep_set(keep, salience, {"neuron": [20], "hidden": [8]}, 1, counts) is keep
