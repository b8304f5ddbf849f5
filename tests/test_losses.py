"""Closed-form checks of the loss family (SPEC section 3), values derived by hand."""

import math

import pytest
import torch

from npo.losses import dpo_loss, ga_loss, kl_loss, nll_loss, npo_loss, npo_weight, simnpo_loss, wga_loss
from npo.methods import FINETUNE, METHODS


def test_npo_at_reference_is_2_over_beta_log2():
    logp = torch.tensor([-5.0, -50.0, -0.3])
    for beta in (0.1, 0.5, 2.0):
        assert npo_loss(logp, logp.clone(), beta).item() == pytest.approx(2 / beta * math.log(2), rel=1e-6)
    assert npo_loss(logp, logp, 0.1).item() == pytest.approx(13.8629, abs=1e-4)


def test_npo_hand_checked_example_and_weight_by_autograd():
    # beta = 0.1, delta = [0, -10, 10]: per-example (2/0.1) log(1 + e^{0.1 delta})
    # = 20 log 2, 20 log(1 + e^-1), 20 log(1 + e) = [13.8629, 6.2652, 26.2652]; mean 15.4645.
    delta = torch.tensor([0.0, -10.0, 10.0], requires_grad=True)
    ref = torch.zeros(3)
    loss = npo_loss(delta, ref, 0.1)
    assert loss.item() == pytest.approx(15.4645, abs=1e-4)
    per_example = torch.stack([npo_loss(d[None], torch.zeros(1), 0.1) for d in delta.detach()])
    assert per_example.tolist() == pytest.approx([13.8629, 6.2652, 26.2652], abs=1e-4)
    loss.backward()
    # dL/d delta_i = W_i / 3 with W = 2 sigmoid(0.1 delta) = [1, 0.5379, 1.4621]
    w = npo_weight(delta.detach(), ref, 0.1)
    assert w.tolist() == pytest.approx([1.0, 0.5379, 1.4621], abs=1e-4)
    assert delta.grad.tolist() == pytest.approx((w / 3).tolist(), abs=1e-6)


def test_npo_beta_to_zero_tends_to_mean_log_ratio():
    logp, ref = torch.tensor([-3.0, -7.0, -1.5]), torch.tensor([-2.0, -4.0, -6.0])
    target = (logp - ref).mean().item()
    beta = 1e-4
    gap = npo_loss(logp, ref, beta).item() - 2 / beta * math.log(2)
    assert gap == pytest.approx(target, abs=1e-3)


def test_first_npo_step_is_ga_on_summed_logprobs():
    logp = torch.tensor([-4.0, -9.0], requires_grad=True)
    npo_loss(logp, logp.detach().clone(), 0.1).backward()
    # W = 1 at theta = ref: gradient of mean(logp) = 1/2 each, like GA on summed log-probs
    assert logp.grad.tolist() == pytest.approx([0.5, 0.5])


def test_dpo_first_step_value_and_gradient():
    win, lose = torch.tensor([-6.0, -2.0], requires_grad=True), torch.tensor([-3.0, -8.0], requires_grad=True)
    loss = dpo_loss(win, lose, win.detach().clone(), lose.detach().clone(), 0.1)
    assert loss.item() == pytest.approx(20 * math.log(2), rel=1e-6)  # margin 0: (2/beta) log 2
    loss.backward()
    # d/dwin (2/b) softplus(-b m) = -(2/b) b sigmoid(0) / 2 (mean over 2) = -0.5
    assert win.grad.tolist() == pytest.approx([-0.5, -0.5])
    assert lose.grad.tolist() == pytest.approx([0.5, 0.5])


def test_simnpo_formula():
    logp, n = torch.tensor([-10.0, -3.0]), torch.tensor([5.0, 3.0])
    beta, gamma = 2.5, 0.5
    # by hand: (2/2.5) * mean(log(1+exp(2.5*(-2)+0.5)), log(1+exp(2.5*(-1)+0.5)))
    expected = 0.8 * (math.log1p(math.exp(-4.5)) + math.log1p(math.exp(-2.0))) / 2
    assert simnpo_loss(logp, n, beta, gamma).item() == pytest.approx(expected, rel=1e-6)


def test_ga_and_nll_are_token_means():
    logp, n = torch.tensor([-6.0, -2.0]), torch.tensor([3.0, 1.0])
    assert ga_loss(logp, n).item() == pytest.approx(-2.0)
    assert nll_loss(logp, n).item() == pytest.approx(2.0)


def test_kl_over_labelled_positions():
    p = torch.tensor([[0.5, 0.5], [0.9, 0.1]])
    q = torch.tensor([[0.25, 0.75], [0.9, 0.1]])
    # KL(p||q) row 1 = 0.5 ln 2 + 0.5 ln(2/3); row 2 = 0; mean over 2 positions
    expected = (0.5 * math.log(2) + 0.5 * math.log(0.5 / 0.75)) / 2
    assert kl_loss(p.log(), q.log()).item() == pytest.approx(expected, rel=1e-6)
    assert kl_loss(p.log(), p.log()).item() == pytest.approx(0.0, abs=1e-7)


def test_wga_weights_each_token_by_its_detached_probability():
    # l = [-1, -2], so p = [e^-1, e^-2] = [0.3678794, 0.1353353].
    # alpha = 1: mean(e^-1 * (-1), e^-2 * (-2)) = (-0.3678794 - 0.2706706) / 2 = -0.3192750
    # alpha = 5: weights e^-5 = 0.0067379, e^-10 = 0.0000454: (-0.0067379 - 0.0000908) / 2 = -0.0034144
    # alpha = 0: GA's token mean (-1 - 2) / 2 = -1.5
    logp = torch.tensor([-1.0, -2.0], requires_grad=True)
    assert wga_loss(logp, 1.0).item() == pytest.approx(-0.3192750, abs=1e-7)
    assert wga_loss(logp, 5.0).item() == pytest.approx(-0.0034144, abs=1e-7)
    assert wga_loss(logp, 0.0).item() == pytest.approx(-1.5)
    # the weights are detached: d/dl_t = p_t^alpha / 2 = [0.1839397, 0.0676676] at alpha = 1
    wga_loss(logp, 1.0).backward()
    assert logp.grad.tolist() == pytest.approx([0.1839397, 0.0676676], abs=1e-7)
    # a token mean over the batch, not a mean of per-sequence means: sequences [-1, -2] and [-3]
    # give (-0.3678794 - 0.2706706 - 3 e^-3 = -0.1493612) / 3 = -0.2626371 (per-sequence: -0.2343181)
    assert wga_loss(torch.tensor([-1.0, -2.0, -3.0]), 1.0).item() == pytest.approx(-0.2626371, abs=1e-7)
    assert wga_loss(torch.zeros(0), 1.0).item() == 0.0  # a micro-batch without forget tokens


# every term of every method -> its hand-derived golden test above
GOLDEN = {
    "ga": test_ga_and_nll_are_token_means,
    "npo": test_npo_hand_checked_example_and_weight_by_autograd,
    "simnpo": test_simnpo_formula,
    "idk": test_ga_and_nll_are_token_means,  # the NLL of the refusals
    "dpo": test_dpo_first_step_value_and_gradient,
    "nll": test_ga_and_nll_are_token_means,
    "kl": test_kl_over_labelled_positions,
    "learn": test_ga_and_nll_are_token_means,
    "wga": test_wga_weights_each_token_by_its_detached_probability,
}


def test_every_term_has_a_golden_test():
    terms = {t.name for m in (*METHODS.values(), FINETUNE) for t in m.terms}
    assert terms == set(GOLDEN), f"terms without a golden test: {sorted(terms - set(GOLDEN))}"
