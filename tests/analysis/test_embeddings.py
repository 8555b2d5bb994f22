"""The embedding analyses on constructed tables whose answers are known in closed form."""
import math

import pytest
import torch

from textdiff.analysis import (
    anisotropy,
    nearest_neighbor_distances,
    noise_to_distance_ratio,
    noisy_nearest_accuracy,
    norm_by_frequency,
    rankdata,
    spearman,
)
from textdiff.core.gaussian import GaussianProcess
from textdiff.core.schedules import DiscreteSchedule, SqrtSchedule


def _process(noise_factor=1.0, T=200):
    return GaussianProcess(DiscreteSchedule(SqrtSchedule(), T), prediction="x0", noise_factor=noise_factor)


# ----- anisotropy -----
def test_anisotropy_of_identical_vectors_is_one():
    w = torch.tensor([[0.3, -1.2, 2.0]]).repeat(7, 1) * torch.arange(1, 8).unsqueeze(-1)  # same direction
    assert anisotropy(w) == pytest.approx(1.0, abs=1e-12)


def test_anisotropy_of_an_orthonormal_set_is_zero():
    q, _ = torch.linalg.qr(torch.randn(16, 16, dtype=torch.float64))
    assert anisotropy(q * torch.rand(16, 1, dtype=torch.float64).add(0.5)) == pytest.approx(0.0, abs=1e-12)


def test_anisotropy_of_a_set_and_its_negation():
    # u_1..u_k and -u_1..-u_k: the normalised vectors sum to 0, so A = (0 - V) / (V (V - 1)) = -1 / (V - 1)
    k = 6
    base = torch.randn(k, 5, dtype=torch.float64)
    w = torch.cat([base, -3.0 * base])  # the negation's scale does not matter for cosines
    V = 2 * k
    assert anisotropy(w) == pytest.approx(-1.0 / (V - 1), abs=1e-12)
    # the minimum over any set of V vectors: V = 2 antipodal vectors give -1
    assert anisotropy(torch.tensor([[1.0, 2.0], [-2.0, -4.0]])) == pytest.approx(-1.0)


def test_anisotropy_equals_the_brute_force_pairwise_mean():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(50, 8, generator=g, dtype=torch.float64) + 0.7  # shifted: clearly anisotropic
    u = w / w.norm(dim=-1, keepdim=True)
    cos = u @ u.t()
    off = ~torch.eye(50, dtype=torch.bool)
    brute = float(cos[off].mean())
    assert brute > 0.2
    assert anisotropy(w) == pytest.approx(brute, abs=1e-12)
    # exclusion drops rows before the mean
    keep = torch.tensor([i for i in range(50) if i not in (0, 3, 49)])
    sub = cos[keep][:, keep]
    brute_sub = float(sub[~torch.eye(len(keep), dtype=torch.bool)].mean())
    assert anisotropy(w, exclude=(0, 3, 49)) == pytest.approx(brute_sub, abs=1e-12)
    assert anisotropy(w.float()) == pytest.approx(brute, abs=1e-6)


def test_anisotropy_rejects_too_few_rows():
    with pytest.raises(ValueError):
        anisotropy(torch.randn(3, 4), exclude=(0, 1))
    with pytest.raises(ValueError):
        anisotropy(torch.randn(3, 4), exclude=(5,))


# ----- ranks and norm against frequency -----
def test_rankdata_averages_ties_and_spearman_by_hand():
    assert rankdata(torch.tensor([3.0, 1.0, 2.0, 2.0])).tolist() == [4.0, 1.0, 2.5, 2.5]
    # x ranks [1, 2.5, 2.5, 4] against y ranks [1, 2, 3, 4]: cov 4.5, var 4.5 and 5 -> sqrt(0.9)
    rho = spearman(torch.tensor([1.0, 2.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert rho == pytest.approx(math.sqrt(0.9))
    assert math.isnan(spearman(torch.ones(5), torch.arange(5.0)))


def test_norm_by_frequency_correlation_and_bins():
    V, d = 40, 6
    g = torch.Generator().manual_seed(2)
    counts = torch.randperm(V, generator=g) * 7 + 1  # distinct counts, shuffled over ids
    direction = torch.nn.functional.normalize(torch.randn(V, d, generator=g), dim=-1)
    rising = direction * torch.log1p(counts.float()).unsqueeze(-1)  # norm increases with frequency
    out = norm_by_frequency(rising, counts, exclude=(0, 1))
    assert out["spearman"] == pytest.approx(1.0)
    assert out["num_tokens"] == V - 2 and out["ids"].tolist() == list(range(2, V))
    assert torch.allclose(out["norms"], torch.log1p(counts[2:].float()), atol=1e-5)
    assert torch.allclose(out["log_freq"], torch.log1p(counts[2:].double()).float())
    bins = out["bins"]
    assert len(bins) == 10 and sum(b["num_tokens"] for b in bins) == V - 2
    means = [b["mean_norm"] for b in bins]
    assert means == sorted(means) and means[0] < means[-1]
    assert all(a["count_max"] < b["count_min"] for a, b in zip(bins, bins[1:]))  # rarest first, disjoint

    falling = direction / torch.log1p(counts.float()).unsqueeze(-1)
    down = norm_by_frequency(falling, counts)
    assert down["spearman"] == pytest.approx(-1.0)
    assert [b["mean_norm"] for b in down["bins"]] == sorted((b["mean_norm"] for b in down["bins"]), reverse=True)


def test_norm_by_frequency_keeps_unseen_tokens():
    counts = torch.tensor([0, 0, 5, 9])
    w = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [0.0, 4.0]])
    out = norm_by_frequency(w, counts, num_bins=2)
    assert out["num_unseen"] == 2 and out["log_freq"][:2].tolist() == [0.0, 0.0]
    assert [b["mean_norm"] for b in out["bins"]] == pytest.approx([1.5, 3.5])
    # ties between the unseen tokens get average ranks: rho of [1.5, 1.5, 3, 4] with [1, 2, 3, 4]
    assert out["spearman"] == pytest.approx(spearman(torch.tensor([0.0, 0.0, 5.0, 9.0]), torch.arange(4.0)))
    assert out["spearman"] < 1.0


# ----- nearest embedding of a noised latent -----
def _separated(V=16, d=16, scale=4.0):
    """Rows scale * e_i: equal norms, orthogonal, so both metrics recover the token at t = 0."""
    return torch.eye(V, d) * scale


def _batch(V, B=40, L=25, seed=3):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (B, L), generator=g)
    mask = torch.arange(L).unsqueeze(0) < torch.randint(5, L + 1, (B, 1), generator=g)
    return ids, mask


@pytest.mark.parametrize("metric", ["dot", "l2"])
def test_accuracy_is_one_without_noise_and_chance_with_heavy_noise(metric):
    V = 16
    E = _separated(V)
    embed = lambda ids: math.sqrt(E.shape[1]) * E[ids]  # noqa: E731 - z0 = sqrt(d) E[w]
    ids, mask = _batch(V)
    n = int(mask.sum())
    acc = noisy_nearest_accuracy(_process(), embed, E, ids, mask, [0.0, 1e-3, 1.0], noise_factor=200.0,
                                 metric=metric, generator=torch.Generator().manual_seed(0))
    assert acc[0] == 1.0
    assert acc[1] == 1.0  # t = 1e-3 snaps to the grid at 0 or 1/T: still clean for these embeddings
    chance, sd = 1 / V, math.sqrt((1 / V) * (1 - 1 / V) / n)
    assert abs(acc[2] - chance) < 5 * sd, (acc[2], chance, n)


def test_accuracy_falls_with_t_and_with_the_noise_factor():
    V, d = 30, 8
    g = torch.Generator().manual_seed(4)
    E = torch.randn(V, d, generator=g) * 0.5
    embed = lambda ids: math.sqrt(d) * E[ids]  # noqa: E731
    ids, mask = _batch(V)
    times = [0.05, 0.2, 0.5, 0.8]
    proc = _process(noise_factor=4.0)
    default = noisy_nearest_accuracy(proc, embed, E, ids, mask, times, metric="l2",
                                     generator=torch.Generator().manual_seed(0))
    f4 = noisy_nearest_accuracy(proc, embed, E, ids, mask, times, noise_factor=4.0, metric="l2",
                                generator=torch.Generator().manual_seed(0))
    f1 = noisy_nearest_accuracy(proc, embed, E, ids, mask, times, noise_factor=1.0, metric="l2",
                                generator=torch.Generator().manual_seed(0))
    assert default == f4  # None = the process's own F
    assert f1 == sorted(f1, reverse=True) and f4 == sorted(f4, reverse=True)  # shared noise: monotone
    assert all(a >= b for a, b in zip(f1, f4)) and f1[1] > f4[1] + 0.1
    assert proc.noise_factor == 4.0  # the override did not touch the model's process


def test_dot_metric_is_the_tied_logits_and_differs_from_l2():
    # token 1 has a much larger norm and a positive dot product with token 0: the logits z0(0) . E^T
    # pick token 1 for token 0, the L2 nearest neighbour does not
    E = torch.tensor([[1.0, 0.0], [3.0, 0.1], [0.0, 1.0]])
    embed = lambda ids: math.sqrt(2) * E[ids]  # noqa: E731
    ids = torch.tensor([[0, 1, 2]])
    mask = torch.ones_like(ids, dtype=torch.bool)
    assert noisy_nearest_accuracy(_process(), embed, E, ids, mask, [0.0], metric="dot") == [pytest.approx(2 / 3)]
    assert noisy_nearest_accuracy(_process(), embed, E, ids, mask, [0.0], metric="l2") == [1.0]
    with pytest.raises(ValueError):
        noisy_nearest_accuracy(_process(), embed, E, ids, mask, [0.0], metric="cosine")
    with pytest.raises(ValueError):
        noisy_nearest_accuracy(_process(), embed, E, ids, torch.zeros_like(mask), [0.0])


# ----- noise against the distance to the nearest neighbour -----
def test_nearest_neighbor_distances_match_brute_force_in_chunks():
    x = torch.randn(37, 5, generator=torch.Generator().manual_seed(5))
    d = torch.cdist(x.double(), x.double())
    d.fill_diagonal_(math.inf)
    assert torch.allclose(nearest_neighbor_distances(x, chunk_size=8), d.min(-1).values, atol=1e-9)


def test_ratio_rises_with_t_and_is_linear_in_the_noise_factor():
    d = 9
    E = torch.eye(d) * 0.5  # every nearest-neighbour distance is 0.5 sqrt(2) before scaling
    scale = math.sqrt(d)
    times = [0.0, 0.1, 0.3, 0.6, 0.9]
    out = noise_to_distance_ratio(_process(noise_factor=4.0), E, scale, times, [1, 2, 4, 8])
    assert sorted(out) == [1.0, 2.0, 4.0, 8.0]
    r1 = out[1.0]
    assert r1[0] == 0.0  # no noise at t = 0
    assert all(a < b for a, b in zip(r1, r1[1:]))
    for f in (2.0, 4.0, 8.0):
        assert out[f] == pytest.approx([f * v for v in r1], rel=1e-9)
    # closed form at one t: F sqrt(1 - abar) sqrt(d) / (sqrt(abar) D), D = scale * 0.5 * sqrt(2)
    abar = float(_process().schedule.alpha_bar(torch.tensor([0.3])))
    expect = math.sqrt(1 - abar) * math.sqrt(d) / (math.sqrt(abar) * scale * 0.5 * math.sqrt(2))
    assert r1[2] == pytest.approx(expect, rel=1e-5)
    # excluded rows do not enter the distances: token 0 far away would not change the others' spacing
    far = torch.cat([torch.full((1, d), 100.0), E])
    assert noise_to_distance_ratio(_process(), far, scale, times, [1.0], exclude=(0,))[1.0] == pytest.approx(r1)
