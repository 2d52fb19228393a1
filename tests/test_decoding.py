"""The decoding loop's pieces on plain tensors: sampling filters and phrase suppression."""

from __future__ import annotations

import torch

from disrouter.node.backends.decoding import PhraseBan, Row, Sampling


def test_greedy_takes_the_argmax_and_filters_keep_only_the_top_tokens() -> None:
    torch.manual_seed(0)
    scores = torch.tensor([[0.0, 3.0, 2.9, 1.0, -1.0]]).repeat(400, 1)

    assert set(Sampling().pick(scores).tolist()) == {1}
    assert set(Sampling(temperature=1.0, top_p=1e-6).pick(scores).tolist()) == {1}
    assert set(Sampling(temperature=1.0, top_k=2).pick(scores).tolist()) == {1, 2}
    assert len(set(Sampling(temperature=1.0).pick(scores).tolist())) >= 4


def test_a_phrase_is_banned_only_where_its_opening_tokens_were_just_produced() -> None:
    ban = PhraseBan([[7], [3, 4, 5]], torch.device("cpu"))
    opened = Row(prompt_ids=[1, 3], max_new=10, tokens=[4])  # prompt + output end in 3, 4
    elsewhere = Row(prompt_ids=[1, 3], max_new=10, tokens=[6])

    scores = ban.apply(torch.zeros(2, 8), [opened, elsewhere])

    assert scores[0, 5] == float("-inf") and scores[1, 5] == 0.0
    assert (scores[:, 7] == float("-inf")).all()
    assert (scores[:, :5] == 0.0).all()
