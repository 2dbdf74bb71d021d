"""Per-request sampling of the transformers engines (`KeyedSampler`): the Gumbel-max draw it does is a
draw from softmax(logits / T) over the top-p set, and a row's draw depends on its seed alone."""
from __future__ import annotations

import math

import torch

from captioning.engines.base import request_seed
from captioning.engines.transformers_local import KeyedSampler


def test_request_seed_depends_on_the_seed_and_the_key_only():
    assert request_seed(1, "clip-a") == request_seed(1, "clip-a")
    assert len({request_seed(1, "clip-a"), request_seed(2, "clip-a"), request_seed(1, "clip-b")}) == 3
    assert 0 <= request_seed(0, "x") < 2 ** 31


def test_keyed_sampler_draws_from_the_tempered_softmax():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    n, t = 4000, 0.7
    sampler = KeyedSampler(list(range(n)), t, 1.0)
    picks = sampler(torch.zeros(n, 1, dtype=torch.long), logits.repeat(n, 1)).argmax(-1)
    freq = torch.bincount(picks, minlength=4).double() / n
    want = torch.softmax(logits.double() / t, -1)
    # 4000 draws: a standard error of at most sqrt(0.25 / 4000) = 0.008 per token
    assert torch.allclose(freq, want, atol=0.03), (freq, want)


def test_keyed_sampler_keeps_to_the_top_p_set_and_each_row_to_its_own_stream():
    logits = torch.tensor([[3.0, 2.9, -5.0, -6.0]])
    sampler = KeyedSampler(list(range(500)), 1.0, 0.9)
    picks = sampler(torch.zeros(500, 1, dtype=torch.long), logits.repeat(500, 1)).argmax(-1)
    assert set(picks.tolist()) == {0, 1}  # tokens 2 and 3 lie outside the top 0.9 of the mass
    # row i of a batch of 3 draws what it draws alone: the same seed gives the same noise
    one = KeyedSampler([7], 1.0, 1.0)(torch.zeros(1, 1, dtype=torch.long), logits)
    three = KeyedSampler([5, 7, 9], 1.0, 1.0)(torch.zeros(3, 1, dtype=torch.long), logits.repeat(3, 1))
    assert torch.equal(one[0], three[1]) and not torch.equal(three[0], three[1])
    assert math.isfinite(three[:, :2].max().item())


def test_served_requests_carry_their_own_seed_when_sampling():
    from captioning.engines import SamplingParams, TextRequest
    from captioning.engines.openai import text_payload

    hot, greedy = SamplingParams(32, 0.7, 1.0, seed=1), SamplingParams(32, 0.0, 1.0, seed=1)
    a, b = TextRequest("clip-a", None, "x"), TextRequest("clip-b", None, "x")
    assert text_payload("m", a, hot)["seed"] == request_seed(1, "clip-a") != text_payload("m", b, hot)["seed"]
    assert "seed" not in text_payload("m", a, greedy)
