"""Closed-form checks of the loss family (SPEC section 3), values derived by hand."""

import math

import pytest
import torch

from npo.losses import (
    ceu_loss,
    dpo_loss,
    ga_loss,
    kl_loss,
    kto_loss,
    nll_loss,
    npo_loss,
    npo_weight,
    pdu_dual_update,
    pdu_forget_loss,
    rmu_control_vector,
    rmu_loss,
    satimp_loss,
    simnpo_loss,
    tnpo_loss,
    undial_loss,
    wga_loss,
)
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
    # the SimNPO authors' parametrisation, -(2/b) logsigmoid(b (nll/n - gamma)) = (2/b) softplus(b (logp/n + gamma)):
    # by hand: (2/2.5) mean(softplus(2.5 (-2 + 0.5)), softplus(2.5 (-1 + 0.5))) = 0.8 mean(softplus(-3.75), softplus(-1.25))
    # = 0.8 (0.0232455 + 0.2519291) / 2 = 0.1100698
    assert simnpo_loss(logp, n, beta, gamma).item() == pytest.approx(0.1100698, abs=1e-6)


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


def test_satimp_weights_by_saturation_and_importance():
    # l = [-1, -2]: p = [0.3678794, 0.1353353], 1 - p = [0.6321206, 0.8646647].
    # b1 = 5, b2 = 0.1: 0.6321206^0.1 = exp(0.1 ln 0.6321206) = exp(-0.0458675) = 0.9551685 and
    # 0.8646647^0.1 = exp(-0.0145413) = 0.9855639, so w = [e^-5 * 0.9551688, e^-10 * 0.9855639]
    # = [0.0064359, 0.0000447] and L = (-0.0064359 - 2 * 0.0000447) / 2 = -0.0032627 (open-unlearning's
    # YAML b2 = 1 instead:
    # w = [0.0067379 * 0.6321206, 0.0000454 * 0.8646647] = [0.0042592, 0.0000393],
    # L = (-0.0042592 - 0.0000785) / 2 = -0.0021689).
    # b1 = 1, b2 = 1: w = [0.2325442, 0.1170196], L = (-0.2325442 - 0.2340393) / 2 = -0.2332917.
    logp = torch.tensor([-1.0, -2.0], dtype=torch.float64, requires_grad=True)
    assert satimp_loss(logp, 5.0, 0.1).item() == pytest.approx(-0.0032627, abs=1e-7)
    assert satimp_loss(logp, 5.0, 1.0).item() == pytest.approx(-0.0021689, abs=1e-7)
    assert satimp_loss(logp, 1.0, 1.0).item() == pytest.approx(-0.2332917, abs=1e-7)
    satimp_loss(logp, 1.0, 1.0).backward()  # weights detached: d/dl_t = w_t / 2
    assert logp.grad.tolist() == pytest.approx([0.2325442 / 2, 0.1170196 / 2], abs=1e-7)


def test_tnpo_and_wtnpo_are_npo_per_token():
    # l = [-1, -2], r = [-0.5, -1.0], so l - r = [-0.5, -1.0].
    # b = 1: softplus(-0.5) = ln(1 + e^-0.5) = ln 1.6065307 = 0.4740770, softplus(-1) = ln 1.3678794
    # = 0.3132617; TNPO = (2/1) * (0.4740770 + 0.3132617) / 2 = 0.7873387.
    # WTNPO a = 1: (2/1) * (e^-1 * 0.4740770 + e^-2 * 0.3132617) / 2 = 0.1744032 + 0.0423954 = 0.2167985.
    # b = 4: b (l - r) = [-2, -4], softplus = [ln 1.1353353, ln 1.0183156] = [0.1269280, 0.0181499];
    # TNPO = (2/4) * (0.1269280 + 0.0181499) / 2 = 0.0362695.
    logp = torch.tensor([-1.0, -2.0], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([-0.5, -1.0], dtype=torch.float64)
    assert tnpo_loss(logp, ref, 1.0).item() == pytest.approx(0.7873387, abs=1e-7)
    assert tnpo_loss(logp, ref, 4.0).item() == pytest.approx(0.0362695, abs=1e-7)
    assert tnpo_loss(logp, ref, 1.0, alpha=1.0).item() == pytest.approx(0.2167985, abs=1e-7)
    # at theta = ref every token contributes (2/b) log 2: 0.5 log 2 = 0.3465736 at b = 4
    assert tnpo_loss(ref, ref, 4.0).item() == pytest.approx(0.3465736, abs=1e-7)
    # gradient = the authors' surrogate's, mean_t sg(p^a W_t) l_t with W_t = 2 sigmoid(b (l - r)):
    # b = 1, a = 0: W / 2 = sigmoid([-0.5, -1]) = [0.3775407, 0.2689414]
    tnpo_loss(logp, ref, 1.0).backward()
    assert logp.grad.tolist() == pytest.approx([0.3775407, 0.2689414], abs=1e-7)
    # a = 1: p^a (detached) times that: [e^-1 * 0.3775407, e^-2 * 0.2689414] = [0.1388895, 0.0363973]
    logp.grad = None
    tnpo_loss(logp, ref, 1.0, alpha=1.0).backward()
    assert logp.grad.tolist() == pytest.approx([0.1388895, 0.0363973], abs=1e-7)


def test_undial_distills_toward_the_adjusted_reference():
    # one position, V = 3, label 0, reference logits [2, 1, 0].
    # gamma = 1: q = softmax([1, 1, 0]) = [e, e, 1] / (2e + 1) = [0.4223188, 0.4223188, 0.1553624].
    # student = reference: log p = [2, 1, 0] - ln(e^2 + e + 1) = [-0.4076060, -1.4076060, -2.4076060];
    # CE = 0.4223188 * 0.4076060 + 0.4223188 * 1.4076060 + 0.1553624 * 2.4076060 = 1.1406496.
    # gradient in the student's logits = softmax - q = [0.6652410 - 0.4223188, 0.2447285 - 0.4223188,
    # 0.0900306 - 0.1553624] = [0.2429222, -0.1775903, -0.0653318].
    # gamma = 10: q = softmax([-8, 1, 0]) = [0.0000902, 0.7309926, 0.2689172]; CE = 1.6764329.
    ref = torch.log_softmax(torch.tensor([[2.0, 1.0, 0.0]], dtype=torch.float64), -1)
    logits = torch.tensor([[2.0, 1.0, 0.0]], dtype=torch.float64, requires_grad=True)
    label = torch.tensor([0])
    loss = undial_loss(torch.log_softmax(logits, -1), ref, label, 1.0)
    assert loss.item() == pytest.approx(1.1406496, abs=1e-7)
    loss.backward()
    assert logits.grad[0].tolist() == pytest.approx([0.2429222, -0.1775903, -0.0653318], abs=1e-7)
    assert undial_loss(ref, ref, label, 10.0).item() == pytest.approx(1.6764329, abs=1e-7)
    # the reference enters only through softmax: raw logits (a constant shift of ref) give the same q
    raw = torch.tensor([[2.0, 1.0, 0.0]], dtype=torch.float64)
    assert undial_loss(ref, raw, label, 10.0).item() == pytest.approx(1.6764329, abs=1e-7)


def test_ceu_pushes_the_label_mass_onto_the_other_tokens():
    # one position, V = 3, label 0, logits [2, 1, 0]: p = [0.6652410, 0.2447285, 0.0900306].
    # q = softmax([-inf, 1, 0]) = [0, e/(e+1), 1/(e+1)] = [0, 0.7310586, 0.2689414];
    # CE = 0.7310586 * 1.4076060 + 0.2689414 * 2.4076060 = 1.6765474; gradient p - q =
    # [0.6652410, 0.2447285 - 0.7310586, 0.0900306 - 0.2689414] = [0.6652410, -0.4863301, -0.1789108].
    logits = torch.tensor([[2.0, 1.0, 0.0]], dtype=torch.float64, requires_grad=True)
    loss = ceu_loss(torch.log_softmax(logits, -1), torch.tensor([0]))
    assert loss.item() == pytest.approx(1.6765474, abs=1e-7)
    loss.backward()
    assert logits.grad[0].tolist() == pytest.approx([0.6652410, -0.4863301, -0.1789108], abs=1e-7)
    # uniform logits [0, 0, 0]: q = [0, 1/2, 1/2], CE = log 3 = 1.0986123, gradient [1/3, -1/6, -1/6]
    flat = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    loss = ceu_loss(torch.log_softmax(flat, -1), torch.tensor([0]))
    assert loss.item() == pytest.approx(math.log(3), abs=1e-9)
    loss.backward()
    assert flat.grad[0].tolist() == pytest.approx([1 / 3, -1 / 6, -1 / 6], abs=1e-9)


def test_kto_as_the_npo_authors_ran_it():
    # two forget answers L = [-10, -20], L_ref = [-8, -15], so L - L_ref = [-2, -5]; KL = 0.5 (from
    # refusals: L_idk = [-5, -6], L_idk_ref = [-5.5, -6.5]).
    # b = 0.1: KL - b (L - L_ref) = [0.7, 1.0]; log sigmoid = -ln(1 + e^-u) = [-0.4031860, -0.3132617];
    # kto = 1 - (2/0.1) * (-0.4031860 - 0.3132617) / 2 = 1 + 7.1644774 = 8.1644774.
    # sigmoid link: sigmoid([0.7, 1.0]) = [0.6681878, 0.7310586]; 1 - 20 * 0.6996232 = -12.9924635.
    # b = 1: u = [2.5, 5.5], log sigmoid = [-0.0788897, -0.0040784]: 1 - (2/1) * (-0.0829682) / 2
    # = 1.0829682; sigmoid = [0.9241418, 0.9959299]: 1 - 0.9241418 - 0.9959299 = -0.9200717.
    logp = torch.tensor([-10.0, -20.0], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([-8.0, -15.0], dtype=torch.float64)
    kl = (torch.tensor([-5.0, -6.0]) - torch.tensor([-5.5, -6.5])).mean().double().requires_grad_()
    assert kto_loss(logp, ref, kl, 0.1).item() == pytest.approx(8.1644774, abs=1e-6)
    assert kto_loss(logp, ref, kl, 0.1, "sigmoid").item() == pytest.approx(-12.9924635, abs=1e-6)
    assert kto_loss(logp, ref, kl, 1.0).item() == pytest.approx(1.0829682, abs=1e-6)
    assert kto_loss(logp, ref, kl, 1.0, "sigmoid").item() == pytest.approx(-0.9200717, abs=1e-6)
    # d/dL_i = -(2/b)(1/2) sigmoid(-u_i)(-b) = sigmoid(-u_i) = [0.3318122, 0.2689414] at b = 0.1;
    # KL is a detached baseline
    kto_loss(logp, ref, kl, 0.1).backward()
    assert logp.grad.tolist() == pytest.approx([0.3318122, 0.2689414], abs=1e-7)
    assert kl.grad is None


def test_pdu_flattens_logits_and_its_dual_variable_ascends():
    # logits [2, 1, 0]: max 2, mean 1 -> (2 - 1)^2 = 1; [3, 0, 0]: max 3, mean 1 -> 4; mean 2.5.
    # gradient of (max - mean)^2 / 2 rows: row 1: 2 (1) [1 - 1/3, -1/3, -1/3] / 2 = [2/3, -1/3, -1/3]
    logits = torch.tensor([[2.0, 1.0, 0.0], [3.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    loss = pdu_forget_loss(logits)
    assert loss.item() == pytest.approx(2.5)
    loss.backward()
    assert logits.grad[0].tolist() == pytest.approx([2 / 3, -1 / 3, -1 / 3])
    assert pdu_forget_loss(torch.log_softmax(logits.detach(), -1)).item() == pytest.approx(2.5)  # shift-free
    assert pdu_forget_loss(torch.ones(4, 5)).item() == 0.0  # uniform
    # lambda <- max(0, lambda + eta (L_r - eps)), eta = 5, eps = 0.3:
    # 100 + 5 (0.5 - 0.3) = 101; 100 + 5 (0.1 - 0.3) = 99; 0.5 + 5 (0.1 - 0.3) = -0.5 -> 0
    assert pdu_dual_update(100.0, 0.5, 5.0, 0.3) == pytest.approx(101.0)
    assert pdu_dual_update(100.0, 0.1, 5.0, 0.3) == pytest.approx(99.0)
    assert pdu_dual_update(0.5, 0.1, 5.0, 0.3) == 0.0


def test_rmu_activation_losses():
    # two tokens, H = 2: h = [[1, 2], [3, 0]]; target c u with u = [0.6, 0.8], c = 5: [3, 4].
    # forget: differences [-2, -2] and [0, -4]: (4 + 4) / 2 = 4 and (0 + 16) / 2 = 8; mean 6.
    # gradient (2 / (H N)) (h - c u) = 0.5 * [[-2, -2], [0, -4]] = [[-1, -1], [0, -2]].
    h = torch.tensor([[1.0, 2.0], [3.0, 0.0]], requires_grad=True)
    loss = rmu_loss(h, 5.0 * torch.tensor([0.6, 0.8]))
    assert loss.item() == pytest.approx(6.0)
    loss.backward()
    assert h.grad.tolist() == [[-1.0, -1.0], [0.0, -2.0]]
    # retain: frozen [[1, 1], [3, 2]]: differences [0, 1] and [0, -2]: 0.5 and 2; mean 1.25
    assert rmu_loss(h.detach(), torch.tensor([[1.0, 1.0], [3.0, 2.0]])).item() == pytest.approx(1.25)
    # the control vector: unit norm; "uniform" has every entry in [0, 1) before normalising, so all
    # are non-negative; seeded, so the same seed gives the same vector and another seed another one
    u = rmu_control_vector(4096, seed=42)
    assert u.norm().item() == pytest.approx(1.0, abs=1e-6) and (u >= 0).all()
    # E[x] = 1/2, E[x^2] = 1/3 for x ~ U[0,1): each entry ~ (1/2)/sqrt(4096/3) = 0.0135 on average
    assert u.mean().item() == pytest.approx(0.5 / math.sqrt(4096 / 3), rel=0.05)
    assert torch.equal(u, rmu_control_vector(4096, seed=42)) and not torch.equal(u, rmu_control_vector(4096, 43))
    g = rmu_control_vector(4096, seed=42, kind="gaussian")
    assert g.norm().item() == pytest.approx(1.0, abs=1e-6) and abs(g.mean().item()) < 0.005  # mean 0 +- 1/64/sqrt(4096)


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
    "satimp": test_satimp_weights_by_saturation_and_importance,
    "tnpo": test_tnpo_and_wtnpo_are_npo_per_token,
    "wtnpo": test_tnpo_and_wtnpo_are_npo_per_token,
    "undial": test_undial_distills_toward_the_adjusted_reference,
    "ceu": test_ceu_pushes_the_label_mass_onto_the_other_tokens,
    "kto": test_kto_as_the_npo_authors_ran_it,
    "kto_sigmoid": test_kto_as_the_npo_authors_ran_it,
    "pdu": test_pdu_flattens_logits_and_its_dual_variable_ascends,
    "pdu_nll": test_pdu_flattens_logits_and_its_dual_variable_ascends,
    "rmu": test_rmu_activation_losses,
    "rmu_retain": test_rmu_activation_losses,
}


def test_every_term_has_a_golden_test():
    terms = {t.name for m in (*METHODS.values(), FINETUNE) for t in m.terms}
    assert terms == set(GOLDEN), f"terms without a golden test: {sorted(terms - set(GOLDEN))}"
