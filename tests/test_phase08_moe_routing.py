"""phase08.moe_routing: routing statistics on constructed routings with known answers, and the pipeline."""

import numpy as np
import pytest

from lab.runner import execute
from phase08_architecture.moe_routing import (
    EXERCISE,
    aggregate_usage,
    cosine_matrix,
    max_deviation_pp,
    noise_floor,
    specialization_scores,
    usage,
)


def test_identical_routing_scores_zero_and_cosine_one():
    layer = np.array([5, 9, 1, 7, 3, 8, 2, 5])
    counts = np.stack([np.stack([layer, layer[::-1]])] * 4)  # 4 domains x 2 layers x 8 experts, all equal
    P = usage(counts)
    assert np.allclose(P.sum(-1), 1)
    assert np.allclose(specialization_scores(P), 0)
    assert np.allclose(cosine_matrix(P), 1)


def test_disjoint_experts_by_hand():
    # domain d sends every token to experts 2d and 2d+1 (top-2): P[d] = 0.5 on its pair, 0 elsewhere.
    counts = np.zeros((4, 3, 8))
    for d in range(4):
        counts[d, :, [2 * d, 2 * d + 1]] = 100
    P = usage(counts)
    # each expert: one domain at 0.5, three at 0 -> mean 0.125, variance (0.375² + 3·0.125²)/4 = 0.046875
    assert np.allclose(specialization_scores(P), 0.046875)
    cos = cosine_matrix(P)
    assert np.allclose(cos[~np.eye(4, dtype=bool)], 0) and np.allclose(np.diag(cos), 1)
    assert max_deviation_pp(aggregate_usage(counts)) == pytest.approx(37.5)


def test_partial_overlap_by_hand():
    # 2 domains, 4 experts, one layer: A = [.5, .5, 0, 0], B = uniform. Var per expert = .125² -> score 0.015625;
    # cosine = (.25)/(sqrt(.5)·.5) = 1/sqrt(2)
    counts = np.array([[[2, 2, 0, 0]], [[1, 1, 1, 1]]])
    P = usage(counts)
    assert specialization_scores(P) == pytest.approx([0.015625])
    assert cosine_matrix(P)[0, 1] == pytest.approx(2**-0.5)
    assert max_deviation_pp(aggregate_usage(counts)) == pytest.approx(25.0)


def test_noise_floor_matches_simulated_identical_routing():
    rng = np.random.default_rng(0)
    D, L, E, k, T = 4, 200, 8, 2, 300
    picks = rng.random((D, L, T, E)).argsort(axis=-1)[..., :k]  # k distinct uniform experts per token
    counts = (picks[..., None] == np.arange(E)).sum(axis=(2, 3))  # [D, L, E]
    P = usage(counts)
    floor = noise_floor(P, [T] * D, k)
    # by hand for uniform usage: 3/4 · (1/8)(1 − 2/8)/(2·300) = 1.171875e-4
    assert floor.mean() == pytest.approx(1.171875e-4, rel=0.02)
    # identical routing (same distribution for every domain) scores at its floor on average
    assert specialization_scores(P).mean() == pytest.approx(floor.mean(), rel=0.1)


def test_usage_rejects_an_empty_layer():
    with pytest.raises(ValueError, match="no routed tokens"):
        usage(np.zeros((2, 1, 8)))


@pytest.mark.slow
def test_pipeline_on_random_tiny_mixtral(tmp_path):
    doc = execute(EXERCISE, "cpu", EXERCISE.tiny, out=tmp_path)
    assert doc["status"] == "ok", doc["reason"]
    m = doc["metrics"]
    assert m["v2_tokens_routed"]["value"] > 0
    usage_rows = doc["tables"]["v2_usage"]["rows"]
    assert [r[0] for r in usage_rows] == ["code", "math", "language", "tool_call"]
    assert all(sum(r[1:9]) == pytest.approx(100, abs=0.1) for r in usage_rows)
    assert len(doc["tables"]["v2_layers"]["rows"]) == EXERCISE.tiny["random_layers"]
    assert 0 < m["v2_cosine_min"]["value"] <= 1
    assert "PIPELINE CHECK" in doc["findings"][0] and "PIPELINE CHECK" in doc["tables"]["v2_usage"]["title"]
    footprint = {r[0]: r for r in doc["tables"]["nf4_footprint"]["rows"]}
    assert footprint["bf16, everything"][1] == 46_702_792_704
    assert (tmp_path / "phase08" / "moe_routing" / "cpu" / "moe_routing_heatmap.png").stat().st_size > 10_000
