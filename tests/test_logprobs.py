"""The log-prob function against a naive full-logits loop, and padding invariance."""

import pytest
import torch
import torch.nn.functional as F

from npo.data.batches import collate, tokenize_qa
from npo.logprobs import labelled_log_softmax, sequence_logprobs

QA = [("Where was Ana Varga born?", "Ana Varga was born in Lisbon."),
      ("What does Omar Ade write?", "Science fiction."),
      ("Who wrote the book?", "It was written by a fictitious author in 1990, in Lisbon.")]


def _examples(tok):
    return [tokenize_qa(tok, "qa", q, a, 128) for q, a in QA]


def naive(model, examples):
    """One sequence at a time, no padding, full logits, float64 log-softmax."""
    out = []
    for ex in examples:
        ids = torch.tensor([ex.input_ids])
        logits = model(input_ids=ids).logits[0].double()
        lp = F.log_softmax(logits[:-1], -1)
        targets = ids[0, 1:]
        out.append(sum(lp[t, targets[t]].item() for t in range(ex.n_prompt - 1, len(ex.input_ids) - 1)))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("side", ["right", "left"])
def test_matches_naive_reference(model, tokenizer, side):
    examples = _examples(tokenizer)
    batch = collate(examples, tokenizer.pad_token_id, side)
    with torch.no_grad():
        logp, n = sequence_logprobs(model, batch, chunk_size=7)
        full, n_full = sequence_logprobs(model, batch, full_logits=True)
    expected = naive(model, examples)
    assert torch.allclose(logp.double(), expected, atol=1e-5, rtol=0)
    assert torch.allclose(full.double(), expected, atol=1e-5, rtol=0)
    assert n.tolist() == [ex.n_labels for ex in examples] == n_full.tolist()


def test_gradients_match_full_logits_path(model, tokenizer):
    batch = collate(_examples(tokenizer), tokenizer.pad_token_id)
    grads = []
    for full in (False, True):
        model.zero_grad()
        logp, _ = sequence_logprobs(model, batch, chunk_size=5, full_logits=full)
        logp.sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_labelled_log_softmax_rows_are_distributions(model, tokenizer):
    examples = _examples(tokenizer)
    batch = collate(examples, tokenizer.pad_token_id)
    with torch.no_grad():
        lp = labelled_log_softmax(model, batch)
    assert lp.shape == (sum(ex.n_labels for ex in examples), len(tokenizer))
    assert torch.allclose(lp.exp().sum(-1), torch.ones(lp.shape[0]), atol=1e-5)


def test_token_stats_against_naive_distribution(model, tokenizer):
    from npo.logprobs import token_stats

    examples = _examples(tokenizer)
    batch = collate(examples, tokenizer.pad_token_id, "left")
    stats = token_stats(model, batch, chunk_size=4)
    with torch.no_grad():
        seq, _ = sequence_logprobs(model, batch)
    per_seq = torch.zeros(len(examples)).index_add(0, stats["rows"], stats["logp"])
    assert torch.allclose(per_seq, seq, atol=1e-5)
    # first labelled token of example 0, by hand from the full distribution
    ex = examples[0]
    with torch.no_grad():
        lp = F.log_softmax(model(input_ids=torch.tensor([ex.input_ids])).logits[0, ex.n_prompt - 1].double(), -1)
    mu = (lp.exp() * lp).sum()
    sigma = ((lp.exp() * lp * lp).sum() - mu * mu).sqrt()
    first = (stats["rows"] == 0).nonzero()[0, 0]
    assert stats["mu"][first].item() == pytest.approx(mu.item(), abs=1e-5)
    assert stats["sigma"][first].item() == pytest.approx(sigma.item(), abs=1e-5)
