"""Every method of METHODS (and fine-tuning) end to end from the CLI on a tiny model: the logged
losses of its first two optimizer steps equal the objective recomputed here, independently, with
full logits on the whole window (accumulation over two micro-batches must give the window's loss),
the reference being the model before the first step."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from helpers import qa_rows, save_tiny_model, write_jsonl
from npo.cli import main as cli_main
from npo.methods import METHODS, method_table

BETA, GAMMA, FORGET_W, RETAIN_W = 0.1, 0.3, 1.5, 0.5
REFUSAL = "I do not know that."
# the other objectives' own keys, at non-default values (every method gets them; each reads its own)
WGA_ALPHA, SAT_B1, SAT_B2, WTNPO_ALPHA, UNDIAL_GAMMA, CEU_SKIP = 2.0, 2.0, 0.5, 0.7, 2.5, 2
PDU_EPS, PDU_LR, RMU_LAYER, RMU_C, SEED = 0.1, 0.7, 0, 3.0, 5
OWN_KEYS = [f"wga_alpha={WGA_ALPHA}", f"satimp_beta1={SAT_B1}", f"satimp_beta2={SAT_B2}",
            f"wtnpo_alpha={WTNPO_ALPHA}", f"undial_gamma={UNDIAL_GAMMA}", f"ceu_ignore_first={CEU_SKIP}",
            f"pdu_eps={PDU_EPS}", f"pdu_dual_lr={PDU_LR}", "pdu_warmup_epochs=0", f"rmu_layer={RMU_LAYER}",
            f"rmu_params=layers\\.{RMU_LAYER}\\.mlp\\.down_proj\\.", f"rmu_steering={RMU_C}",
            "rmu_vector=gaussian", f"seed={SEED}"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("methods")
    model = save_tiny_model(root / "model")
    forget = write_jsonl(root / "forget.jsonl", qa_rows(8))
    retain = write_jsonl(root / "retain.jsonl", qa_rows(8, offset=8))  # a window holds the whole set
    (root / "idk.txt").write_text(REFUSAL + "\n")
    return root, model, forget, retain


def _encode(tok, question, answer):
    """`Question: q\\nAnswer: a` + EOS; labelled: every token ending inside the answer, and the EOS."""
    prompt = f"Question: {question}\nAnswer: "
    enc = tok(prompt + answer, return_offsets_mapping=True)
    n_prompt = sum(end <= len(prompt) for _, end in enc["offset_mapping"])
    return list(enc["input_ids"]) + [tok.eos_token_id], n_prompt


def _batch(tok, pairs):
    rows = [_encode(tok, q, a) for q, a in pairs]
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), tok.pad_token_id)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, (seq, n_prompt) in enumerate(rows):
        ids[i, :len(seq)] = torch.tensor(seq)
        mask[i, :len(seq)] = 1
        labels[i, n_prompt:len(seq)] = torch.tensor(seq[n_prompt:])
    return ids, mask, labels


@torch.no_grad()
def _outputs(model, tok, pairs):
    """Per-sequence summed log-probs, label counts, and log-distributions at labelled positions."""
    ids, mask, labels = _batch(tok, pairs)
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].double()
    target = labels[:, 1:]
    keep = target != -100
    logsm = F.log_softmax(logits, -1)
    token = logsm.gather(-1, target.clamp(min=0)[..., None]).squeeze(-1) * keep
    return token.sum(-1), keep.sum(-1).double(), logsm[keep]


@torch.no_grad()
def _tokens(model, tok, pairs):
    """Per labelled token, row-major: log-prob, row, target id and float64 logits."""
    ids, mask, labels = _batch(tok, pairs)
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].double()
    target = labels[:, 1:]
    keep = target != -100
    rows = keep.nonzero()[:, 0]
    lp = F.log_softmax(logits, -1).gather(-1, target.clamp(min=0)[..., None]).squeeze(-1)[keep]
    return {"logp": lp, "rows": rows, "targets": target[keep], "logits": logits[keep]}


@torch.no_grad()
def _hidden(model, tok, pairs, layer):
    """HF's own hidden_states[layer + 1] (the output of block `layer`) at the labelled tokens."""
    ids, mask, labels = _batch(tok, pairs)
    out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    return out.hidden_states[layer + 1][labels != -100].double()


def _control_vector(hidden_size):
    """RMU's u, gaussian kind: a standard normal draw from a generator seeded with the run's seed, normalised."""
    u = torch.randn(hidden_size, generator=torch.Generator().manual_seed(SEED), dtype=torch.float64)
    return (u / u.norm()).float().double()


def _softplus(x):
    return math.log1p(math.exp(x))


def _expected(method, now, ref, tok, forget, retain):
    """(forget term, retain term) of the window, from the papers' formulas."""
    f_pairs = [(r["question"], r["answer"]) for r in forget]
    idk_pairs = [(r["question"], REFUSAL) for r in forget]
    r_pairs = [(r["question"], r["answer"]) for r in retain]
    lp, n, _ = _outputs(now, tok, f_pairs)
    lp_ref, _, _ = _outputs(ref, tok, f_pairs)
    m = METHODS[method]
    kind = m.forget.name
    if kind == "ga":
        f = lp.sum() / n.sum()
    elif kind == "npo":
        f = torch.mean(torch.tensor([2 / BETA * math.log1p(math.exp(BETA * d)) for d in (lp - lp_ref).tolist()]))
    elif kind == "simnpo":
        f = torch.mean(torch.tensor([2 / BETA * math.log1p(math.exp(BETA * (x / k + GAMMA)))
                                     for x, k in zip(lp.tolist(), n.tolist(), strict=True)]))
    elif kind == "idk":
        lp_i, n_i, _ = _outputs(now, tok, idk_pairs)
        f = -lp_i.sum() / n_i.sum()
    elif kind == "dpo":
        lp_i, _, _ = _outputs(now, tok, idk_pairs)
        lp_i_ref, _, _ = _outputs(ref, tok, idk_pairs)
        margin = (lp_i - lp_i_ref) - (lp - lp_ref)
        f = torch.mean(torch.tensor([2 / BETA * math.log1p(math.exp(-BETA * x)) for x in margin.tolist()]))
    elif kind == "wga":  # token mean over the window of p^alpha * log p, p detached
        lt = _tokens(now, tok, f_pairs)["logp"]
        f = torch.mean(torch.tensor([math.exp(WGA_ALPHA * x) * x for x in lt.tolist()]))
    elif kind == "satimp":  # token mean of p^b1 (1 - p)^b2 log p
        lt = _tokens(now, tok, f_pairs)["logp"].tolist()
        f = torch.mean(torch.tensor([math.exp(x) ** SAT_B1 * (1 - math.exp(x)) ** SAT_B2 * x for x in lt]))
    elif kind in ("tnpo", "wtnpo"):  # token mean of p^a (2/b) softplus(b (l - r)); a = 0 for TNPO
        a = WTNPO_ALPHA if kind == "wtnpo" else 0.0
        lt, rt = _tokens(now, tok, f_pairs)["logp"].tolist(), _tokens(ref, tok, f_pairs)["logp"].tolist()
        f = torch.mean(torch.tensor([math.exp(a * x) * 2 / BETA * _softplus(BETA * (x - y))
                                     for x, y in zip(lt, rt, strict=True)]))
    elif kind == "undial":  # CE(softmax(z_ref - gamma onehot(y)), p_theta) over labelled positions
        t_now, t_ref = _tokens(now, tok, f_pairs), _tokens(ref, tok, f_pairs)
        z = t_ref["logits"].clone()
        z[torch.arange(len(z)), t_now["targets"]] -= UNDIAL_GAMMA
        f = -(F.softmax(z, -1) * F.log_softmax(t_now["logits"], -1)).sum(-1).mean()
    elif kind == "ceu":  # CE(softmax(z with z_y = -inf), p_theta), each answer's first CEU_SKIP tokens left out
        t = _tokens(now, tok, f_pairs)
        keep = [i for i, r in enumerate(t["rows"].tolist()) if i - t["rows"].tolist().index(r) >= CEU_SKIP]
        z = t["logits"][keep].clone()
        z[torch.arange(len(z)), t["targets"][keep]] = -math.inf
        q = F.softmax(z, -1)
        logsm = F.log_softmax(t["logits"][keep], -1)
        f = -(q * torch.where(q > 0, logsm, 0.0)).sum(-1).mean()
    elif kind in ("kto", "kto_sigmoid"):  # 1 - (2/b) mean link(KL - b (L - L_ref)), KL over the window's refusals
        lp_i, _, _ = _outputs(now, tok, idk_pairs)
        lp_i_ref, _, _ = _outputs(ref, tok, idk_pairs)
        kl = float((lp_i - lp_i_ref).mean())
        link = (lambda x: -_softplus(-x)) if kind == "kto" else (lambda x: 1 / (1 + math.exp(-x)))
        f = 1 - 2 / BETA * torch.mean(torch.tensor([link(kl - BETA * d) for d in (lp - lp_ref).tolist()]))
    elif kind == "pdu":  # mean over labelled positions of (max logit - mean logit)^2
        z = _tokens(now, tok, f_pairs)["logits"]
        f = ((z.max(-1).values - z.mean(-1)) ** 2).mean()
    elif kind == "rmu":  # mean over forget tokens of (1/H) ||h - c u||^2
        h = _hidden(now, tok, f_pairs, RMU_LAYER)
        f = ((h - RMU_C * _control_vector(h.shape[1])) ** 2).mean(-1).mean()
    else:
        raise AssertionError(f"no independent formula for forget term {kind}: add one")
    if m.retain is None:
        return float(f), None
    lp_r, n_r, dist = _outputs(now, tok, r_pairs)
    if m.retain.name == "nll":
        r = -lp_r.sum() / n_r.sum()
    elif m.retain.name == "kl":
        _, _, dist_ref = _outputs(ref, tok, r_pairs)
        r = (dist_ref.exp() * (dist_ref - dist)).sum(-1).mean()
    elif m.retain.name == "pdu_nll":  # the NLL; its coefficient lambda is checked by the caller
        r = -lp_r.sum() / n_r.sum()
    elif m.retain.name == "rmu_retain":  # mean over retain tokens of (1/H) ||h - h_frozen||^2
        r = ((_hidden(now, tok, r_pairs, RMU_LAYER) - _hidden(ref, tok, r_pairs, RMU_LAYER)) ** 2).mean(-1).mean()
    else:
        raise AssertionError(f"no independent formula for retain term {m.retain.name}: add one")
    return float(f), float(r)


def _model_at(base_dir: Path, trainable: Path | None):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    if trainable is not None:
        state = load_file(str(trainable))
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value)
    return model


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_from_the_cli_logs_its_objective(setup, tmp_path, method):
    from transformers import AutoTokenizer

    root, model_dir, forget_file, retain_file = setup
    out = tmp_path / method
    code = cli_main(["unlearn", "--model", str(model_dir), "--method", method, "--forget", str(forget_file),
                     "--retain", str(retain_file), "--out", str(out), "--epochs", "2", "--batch-size", "4",
                     "--lr", "5e-3", "--beta", str(BETA), f"gamma={GAMMA}", f"forget_weight={FORGET_W}",
                     f"retain_weight={RETAIN_W}", "grad_accum=2", "warmup_epochs=0", "save_every_steps=1",
                     f"idk={root / 'idk.txt'}", "template=qa", "max_length=64", *OWN_KEYS])
    assert code == 0
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    tok = AutoTokenizer.from_pretrained(model_dir)
    forget = [json.loads(x) for x in forget_file.read_text().splitlines()]
    retain = [json.loads(x) for x in retain_file.read_text().splitlines()]
    ref = _model_at(model_dir, None)
    after_one = _model_at(model_dir, out / "checkpoint" / "trainable.safetensors")  # saved after step 1
    lam = RETAIN_W  # PDU's dual variable starts at retain_weight, then one ascent step per optimizer step
    for record, now in zip(records, (ref, after_one), strict=True):
        f, r = _expected(method, now, ref, tok, forget, retain)
        assert record["forget_loss"] == pytest.approx(f, rel=1e-4, abs=1e-5)
        total = FORGET_W * f
        if r is not None:
            assert record["retain_loss"] == pytest.approx(r, rel=1e-4, abs=1e-5)
            total += (lam if method == "pdu" else RETAIN_W) * r
        if method == "pdu":
            assert record["pdu_lambda"] == pytest.approx(lam, rel=1e-6)
            lam = max(0.0, lam + PDU_LR * (r - PDU_EPS))
        assert record["loss"] == pytest.approx(total, rel=1e-4, abs=1e-5)
    assert records[1]["forget_loss"] != records[0]["forget_loss"]  # the first step moved the model
    if method == "rmu":  # the control vector is in the checkpoint; only the chosen tensors were trained
        state = json.loads((out / "checkpoint" / "state.json").read_text())
        u = torch.tensor(state["method"]["rmu_vector"])
        assert torch.equal(u.double(), _control_vector(len(u)))
        assert set(load_file(str(out / "checkpoint" / "trainable.safetensors"))) == {
            f"model.layers.{RMU_LAYER}.mlp.down_proj.weight"}


def test_finetune_from_the_cli_logs_the_nll(setup, tmp_path):
    from transformers import AutoTokenizer

    root, model_dir, forget_file, retain_file = setup
    out = tmp_path / "ft"
    code = cli_main(["finetune", "--model", str(model_dir), "--train", f"{forget_file},{retain_file}", "--out",
                     str(out), "--epochs", "1", "--batch-size", "8", "grad_accum=2", "warmup_epochs=0",
                     "template=qa", "max_length=64"])
    assert code == 0
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = [json.loads(x) for f in (forget_file, retain_file) for x in f.read_text().splitlines()]
    lp, n, _ = _outputs(_model_at(model_dir, None), tok, [(r["question"], r["answer"]) for r in rows])
    assert record["nll"] == pytest.approx(float(-lp.sum() / n.sum()), rel=1e-4)
    assert record["loss"] == record["nll"]


def test_readme_method_table_is_generated_from_methods():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert method_table() in readme, "README's method table differs from `npo methods`: paste its output"


def test_unknown_method_is_refused_with_the_choices(capsys):
    assert cli_main(["unlearn", "--method", "npo_typo", "--model", "x", "--out", "y"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "invalid choice: 'npo_typo'" in err and "'npo_rt'" in err
