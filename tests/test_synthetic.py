"""The synthetic experiment (SPEC §6): closed-form gradients against autograd of naive per-run losses,
Bernoulli KL and NPO values by hand, the curve shapes the paper reports, and `npo synthetic` end to end."""

import argparse
import json
import math

import numpy as np
import pytest
import torch

from npo.commands import synthetic as synthetic_cli
from npo.errors import NpoError
from npo.synthetic import experiment as syn

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def small():
    """A small study (few rows) with briefly pre-trained models: enough for exact gradient checks."""
    data = syn.make_data(1.0, [3, 4], n_forget=12, n_retain=20, n_eval=7)
    return data, syn.pretrain(data, steps=300)


def naive_loss(a, a_ref, phi_f, y_f, y_idk, phi_r, y_r, m: syn.Setting) -> torch.Tensor:
    """One run's objective written from SPEC §3 for a single parameter vector, without shared code."""

    def prob(z, y):  # π(y|x) for y ∈ {0, 1}
        p1 = torch.sigmoid(z)
        return torch.where(y == 1, p1, 1 - p1)

    zf, zr, rf, rr = phi_f @ a, phi_r @ a, phi_f @ a_ref, phi_r @ a_ref
    b = m.beta
    forget = {
        "ga": lambda: torch.log(prob(zf, y_f)).mean(),
        "idk": lambda: -torch.log(prob(zf, y_idk)).mean(),
        "npo": lambda: (2 / b * torch.log1p((prob(zf, y_f) / prob(rf, y_f)) ** b)).mean(),
        "dpo": lambda: (-2 / b * torch.log(torch.sigmoid(
            b * (torch.log(prob(zf, y_idk) / prob(rf, y_idk)) - torch.log(prob(zf, y_f) / prob(rf, y_f)))))).mean(),
    }[m.forget]()
    if m.retain == "rt":
        forget = forget - torch.log(prob(zr, y_r)).mean()
    elif m.retain == "kl":
        p, q = torch.sigmoid(rr), torch.sigmoid(zr)
        forget = forget + (p * torch.log(p / q) + (1 - p) * torch.log((1 - p) / (1 - q))).mean()
    return forget


ALL_METHODS = syn.table1_methods(1) + syn.table1_methods(0) + syn.beta_sweep_methods()


def test_closed_form_gradient_equals_autograd_of_naive_loss(small):
    data, models = small
    s, _, k = data.phi.shape
    a = models.ref.unsqueeze(1) + 0.3 * torch.randn(s, len(ALL_METHODS), k, dtype=torch.float64,
                                                     generator=torch.Generator().manual_seed(0))
    ref_z = syn.reference_logits(data, models)
    grad = syn.unlearn_grad(a, data, ref_z, ALL_METHODS)
    loss = syn.unlearn_loss(a, data, ref_z, ALL_METHODS)
    nf = data.n_forget
    for i in range(s):
        rows = (data.phi[i, :nf], data.y[i, 0, :nf], data.y_idk[i, 0], data.phi[i, nf:], data.y[i, 0, nf:])
        for j, m in enumerate(ALL_METHODS):
            aj = a[i, j].clone().requires_grad_(True)
            value = naive_loss(aj, models.ref[i], *rows, m)
            (expected,) = torch.autograd.grad(value, aj)
            assert loss[i, j].item() == pytest.approx(value.item(), rel=1e-10), m
            torch.testing.assert_close(grad[i, j], expected, rtol=1e-9, atol=1e-12, msg=m.name)


def test_vectorised_loss_gradient_matches_autograd(small):
    data, models = small
    methods = syn.table1_methods(1)
    a = (models.ref.unsqueeze(1) + 0.1).repeat(1, len(methods), 1).requires_grad_(True)
    ref_z = syn.reference_logits(data, models)
    syn.unlearn_loss(a, data, ref_z, methods).sum().backward()
    torch.testing.assert_close(a.grad, syn.unlearn_grad(a.detach(), data, ref_z, methods))


def test_pretrain_is_plain_gd_on_mean_nll(small):
    data, _ = small
    got = syn.pretrain(data, steps=5)
    nf = data.n_forget
    for i in range(data.phi.shape[0]):
        for rows, a_got in ((slice(None), got.ref[i]), (slice(nf, None), got.retrained[i])):
            phi, y = data.phi[i, rows], data.y[i, 0, rows]
            a = torch.zeros(phi.shape[1], dtype=torch.float64, requires_grad=True)
            for _ in range(5):
                nll = torch.nn.functional.binary_cross_entropy_with_logits(phi @ a, y)
                (g,) = torch.autograd.grad(nll, a)
                a = (a - syn.PRETRAIN_LR * g).detach().requires_grad_(True)
            torch.testing.assert_close(a_got, a.detach())


def test_bernoulli_kl_by_hand():
    # KL(Bern(1/2) ‖ Bern(3/4)) = ½ ln(2/3) + ½ ln 2 = ½ ln(4/3)
    p, q = torch.tensor([0.0], dtype=torch.float64), torch.tensor([math.log(3)], dtype=torch.float64)
    assert syn.bernoulli_kl(p, q).item() == pytest.approx(0.5 * math.log(4 / 3), rel=1e-12)
    # KL(Bern(0.9) ‖ Bern(0.2)) = 0.9 ln(0.9/0.2) + 0.1 ln(0.1/0.8) = 1.3536697 − 0.2079442 = 1.1457255
    logit = lambda x: torch.tensor(math.log(x / (1 - x)), dtype=torch.float64)  # noqa: E731
    v = syn.bernoulli_kl(logit(0.9), logit(0.2)).item()
    assert v == pytest.approx(0.9 * math.log(4.5) + 0.1 * math.log(0.125), rel=1e-12)
    assert v == pytest.approx(1.1457255, abs=1e-7)
    z = torch.linspace(-30, 30, 7, dtype=torch.float64)
    assert syn.bernoulli_kl(z, z).abs().max().item() < 1e-12
    assert math.isfinite(syn.bernoulli_kl(torch.tensor(5.0), torch.tensor(-200.0)).item())


def test_npo_loss_at_reference_is_2_over_beta_log2(small):
    data, models = small
    methods = [syn.Setting(f"npo{b}", "npo", None, 1e-3, b) for b in (0.1, 1.0, 10.0)]
    a = models.ref.unsqueeze(1).repeat(1, len(methods), 1)
    loss = syn.unlearn_loss(a, data, syn.reference_logits(data, models), methods)
    for j, b in enumerate((0.1, 1.0, 10.0)):
        torch.testing.assert_close(loss[:, j], torch.full_like(loss[:, j], 2 / b * math.log(2)))
    assert loss[0, 0].item() == pytest.approx(13.8629, abs=1e-4)  # by hand: 20 ln 2


def test_npo_first_step_equals_ga_step_on_forget_set(small):
    """W = 1 at θ = ref, so NPO's first gradient is GA's (mean-over-samples log-prob in both)."""
    data, models = small
    methods = [syn.Setting("GA", "ga", None, 1.0), syn.Setting("NPO", "npo", None, 1.0, 0.7)]
    a = models.ref.unsqueeze(1).repeat(1, 2, 1)
    g = syn.unlearn_grad(a, data, syn.reference_logits(data, models), methods)
    torch.testing.assert_close(g[:, 0], g[:, 1])


@pytest.fixture(scope="module")
def alpha1():
    """Quick-mode α = 1 study: 2 seeds, shorter pre-training, the paper's 2000 unlearning steps."""
    return syn.study(1, seeds=[0, 1], steps=2000, pretrain_steps=syn.PRETRAIN_STEPS // 5)[0]


def _mean(curves, metric, name):
    return curves.summary(metric)["mean"][:, curves.names.index(name)]


def test_paper_shapes_alpha1(alpha1):
    c, steps = alpha1, alpha1.steps
    at = lambda step: int(np.searchsorted(steps, step))  # noqa: E731
    start_f, start_r = _mean(c, "forget_distance", "GA")[0], _mean(c, "retain_distance", "GA")[0]
    assert 1.2 < start_f < 2.2 and 0.005 < start_r < 0.05

    # GA: the forget distance bottoms out mid-run, then the retain distance explodes (collapse).
    fd, rd = _mean(c, "forget_distance", "GA"), _mean(c, "retain_distance", "GA")
    bottom = int(fd.argmin())
    assert 500 <= steps[bottom] <= 1600 and fd[bottom] < 0.1
    assert rd[-1] > 0.25 and rd[-1] > 5 * rd[bottom] and fd[-1] > 2 * fd[bottom]

    # NPO+RT: retain distance stays near its start while forgetting within ~250 steps.
    fd, rd = _mean(c, "forget_distance", "NPO+RT"), _mean(c, "retain_distance", "NPO+RT")
    assert fd[at(250)] < 0.1 and fd[-1] < 0.1
    assert rd.max() < 2 * start_r

    # NPO alone: retain distance rises, then plateaus far below GA's.
    rd = _mean(c, "retain_distance", "NPO")
    assert 0.05 < rd[-1] < 0.4 and rd[-1] - rd[at(1000)] < 0.25 * rd[-1]

    # IDK+RT stalls high.
    assert _mean(c, "forget_distance", "IDK+RT")[-1] > 0.5

    # Forget KL: linear growth for GA (equal increments), plateau for NPO.
    kl = _mean(c, "forget_kl", "GA")
    d1, d2 = kl[at(1500)] - kl[at(1000)], kl[-1] - kl[at(1500)]
    assert kl[-1] > 15 and 0.6 < d2 / d1 < 1.6
    for name in ("NPO", "NPO+RT"):
        kl = _mean(c, "forget_kl", name)
        assert 2 < kl[-1] < 8 and kl[-1] - kl[at(1000)] < 0.15 * kl[-1]


def _parse(argv):
    parser = argparse.ArgumentParser()
    synthetic_cli.add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_quick_end_to_end(tmp_path, capsys):
    out = tmp_path / "syn"
    args = _parse(["--quick", "--out", str(out), "--json", "--steps", "300", "--pretrain-steps", "1000",
                   "--figure3-steps", "200"])
    assert synthetic_cli.main(args) == 0
    for name in ("curves.csv", "curves.json", "figure3.png", "figure4.png", "figure9.png"):
        assert (out / name).stat().st_size > 0, name
    report = json.loads(capsys.readouterr().out)
    assert report["alpha"] == 1 and report["seeds"] == 2
    assert set(report["methods"]) == {m.name for m in syn.table1_methods(1)}
    assert set(report["alpha0"]) == set(report["methods"])
    values = [v for r in (report["methods"], report["alpha0"]) for m in r.values() for v in m.values()]
    assert all(math.isfinite(v) for v in values)
    curves = json.loads((out / "curves.json").read_text())["curves"]
    assert {(r["study"], r["alpha"]) for r in curves} == {("table1", 1.0), ("table1", 0.0), ("figure3", 1.0)}
    assert all(len(r["mean"]) == len(r["steps"]) and r["steps"][-1] in (200, 300) for r in curves)
    lines = (out / "curves.csv").read_text().splitlines()
    assert lines[0] == "study,alpha,method,step,metric,mean,std,min,max"
    assert len(lines) == 1 + sum(len(r["steps"]) for r in curves)


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "0"], "--seeds must be at least 1"),
    (["--steps", "-5"], "--steps must be at least 1"),
    (["--quick", "--eval-every", "0"], "--eval-every must be at least 1"),
])
def test_cli_rejects_bad_input(tmp_path, argv, message):
    with pytest.raises(NpoError, match=message):
        synthetic_cli.main(_parse([*argv, "--out", str(tmp_path / "x")]))


def test_dispatcher_exit_code_2(tmp_path, capsys):
    from npo.cli import main

    assert main(["synthetic", "--seeds", "0", "--out", str(tmp_path)]) == 2
    assert "--seeds must be at least 1" in capsys.readouterr().err


def test_forget_only_runs_skip_retain_rows_without_changing_results(small):
    """Runs without a retain term train on the forget rows only; batching them with a run that needs
    the retain rows (full data) must give the same trajectories."""
    data, models = small
    alone = [syn.Setting("GA", "ga", None, 1e-2), syn.Setting("NPO", "npo", None, 1e-2, 0.5)]
    mixed = syn.unlearn(data, models, [*alone, syn.Setting("GA+RT", "ga", "rt", 1e-2)], 60, eval_every=20)
    only = syn.unlearn(data, models, alone, 60, eval_every=20)
    for key in syn.METRICS:
        np.testing.assert_allclose(only.metrics[key], mixed.metrics[key][..., :2], rtol=1e-10, atol=1e-14)
