"""The trainer: NPO lowers forget log-probs, accumulation is exact, the cached reference equals the
online one, LoRA with an adapter-disabled reference, and the CLI end to end."""

import json
import math
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from helpers import qa_rows, save_tiny_model, write_jsonl
from npo.config import build
from npo.errors import ConfigError, NpoError
from npo.methods import METHODS
from npo.train import Trainer


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    model = save_tiny_model(root / "model")
    forget = write_jsonl(root / "forget.jsonl", qa_rows(8))
    retain = write_jsonl(root / "retain.jsonl", qa_rows(16, offset=8))
    (root / "idk.txt").write_text("I do not know.\nNo idea.\nI cannot say.\n")
    return root, model, forget, retain


def cfg_for(setup, out, **kw):
    root, model, forget, retain = setup
    base = dict(model=str(model), forget=str(forget), retain=str(retain), idk=str(root / "idk.txt"), out=str(out),
                method="npo", epochs=1, batch_size=4, lr=1e-3, warmup_epochs=0, max_length=64, template="qa")
    base.update(kw)
    return build(None, base)


def trainer_for(cfg):
    return Trainer(cfg, METHODS[cfg.method])


def weights(run_dir):
    return load_file(str(next((run_dir / "model").glob("*.safetensors"))))


def test_three_npo_steps_lower_forget_logprob(setup, tmp_path):
    cfg = cfg_for(setup, tmp_path / "run", epochs=3, batch_size=8, lr=3e-3)
    trainer = trainer_for(cfg)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    run_dir = trainer.run()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 3
    assert records[0]["npo_weight"] == pytest.approx(1.0, abs=1e-5)  # W = 1 at theta = ref
    assert records[0]["forget_loss"] == pytest.approx(2 / 0.1 * torch.log(torch.tensor(2.0)).item(), rel=1e-5)
    assert records[-1]["forget_logp"] < records[0]["forget_logp"]
    after = weights(run_dir)
    assert any(not torch.equal(before[k], after[k]) for k in after)
    for name in ("config.yaml", "env.json", "done.json", "model/config.json"):
        assert (run_dir / name).exists()


def test_accumulation_8x1_equals_4x2(setup, tmp_path):
    a = trainer_for(cfg_for(setup, tmp_path / "a", method="npo_rt", batch_size=8, grad_accum=1, epochs=2)).run()
    b = trainer_for(cfg_for(setup, tmp_path / "b", method="npo_rt", batch_size=4, grad_accum=2, epochs=2)).run()
    wa, wb = weights(a), weights(b)
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


@pytest.mark.parametrize("method", ["npo_rt", "npo_kl"])
def test_backward_per_term_equals_one_backward_of_the_sum(setup, tmp_path, monkeypatch, method):
    """Backpropagating the forget and retain terms one after the other (the default) gives the weights
    of one backward of their sum (the DeepSpeed path)."""
    import npo.train

    a = trainer_for(cfg_for(setup, tmp_path / "split", method=method, epochs=2)).run()

    class AsIfDeepSpeed:  # the summed path is taken when the accelerator's type equals DEEPSPEED
        DEEPSPEED = npo.train.DistributedType.NO
    monkeypatch.setattr(npo.train, "DistributedType", AsIfDeepSpeed)
    b = trainer_for(cfg_for(setup, tmp_path / "summed", method=method, epochs=2)).run()
    wa, wb = weights(a), weights(b)
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    start = load_file(str(next(setup[1].glob("*.safetensors"))))
    assert any(not torch.equal(wa[k], start[k]) for k in wa if k in start)  # the steps did move the weights


@pytest.mark.parametrize("method", ["npo", "dpo"])
def test_cached_reference_equals_online(setup, tmp_path, method):
    runs = {}
    for ref in ("cached", "online"):
        run = trainer_for(cfg_for(setup, tmp_path / ref, method=method, reference=ref, epochs=2)).run()
        runs[ref] = [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    # float32: the two paths batch (and pad) the reference pass differently, so agree to ~1 ulp of the loss
    assert runs["cached"] == pytest.approx(runs["online"], rel=1e-6, abs=1e-6)


def test_lora_npo_kl_uses_adapter_disabled_reference(setup, tmp_path):
    cfg = cfg_for(setup, tmp_path / "lora", method="npo_kl", lora_r=4, lora_alpha=8, epochs=2, lr=1e-2,
                  save_merged=True)
    trainer = trainer_for(cfg)
    run_dir = trainer.run()
    assert trainer.online.lora and trainer.online.model is trainer.model  # no second copy
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["retain_loss"] == pytest.approx(0.0, abs=1e-6)  # KL is 0 before the first update
    assert records[-1]["retain_loss"] > 0
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(run_dir / "model")  # merged LoRA reloads as a plain model


def test_finetune_then_unlearn_cli_end_to_end(setup, tmp_path):
    root, model, forget, retain = setup
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    ft = subprocess.run([sys.executable, "-m", "npo", "finetune", "--model", str(model), "--out", str(tmp_path / "ft"),
                         "--epochs", "2", "--lr", "1e-3", f"train={forget},{retain}", "template=qa", "max_length=64"],
                        capture_output=True, text=True, env=env)
    assert ft.returncode == 0, ft.stderr
    un = subprocess.run([sys.executable, "-m", "npo", "unlearn", "--model", str(tmp_path / "ft" / "model"),
                         "--method", "npo_rt", "--forget", str(forget), "--retain", str(retain),
                         "--out", str(tmp_path / "un"), "--epochs", "1", "--lr", "1e-3", "template=qa"],
                        capture_output=True, text=True, env=env)
    assert un.returncode == 0, un.stderr
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tmp_path / "un" / "model")
    m = AutoModelForCausalLM.from_pretrained(tmp_path / "un" / "model")
    ids = tok("Question: Where was Ana Varga born?\nAnswer: ", return_tensors="pt")
    out = m.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]


# ----------------------------------------------------------------------------- objectives with more than a loss


def test_kto_window_baseline_makes_accumulation_exact(setup, tmp_path):
    """KTO's KL baseline is a mean over the whole window, computed before its micro-batches, so one
    micro-batch of 8 and two of 4 take the same steps."""
    a = trainer_for(cfg_for(setup, tmp_path / "a", method="kto_rt", batch_size=8, grad_accum=1, epochs=2)).run()
    b = trainer_for(cfg_for(setup, tmp_path / "b", method="kto_rt", batch_size=4, grad_accum=2, epochs=2)).run()
    wa, wb = weights(a), weights(b)
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    kl = [json.loads(x)["kto_kl"] for x in (b / "metrics.jsonl").read_text().splitlines()]
    assert kl[0] == pytest.approx(0.0, abs=1e-5) and kl[1] != 0.0  # theta = ref at the first step


@pytest.mark.parametrize("method", ["tnpo", "kto"])
def test_cached_reference_equals_online_for_token_and_refusal_references(setup, tmp_path, method):
    runs = {}
    for ref in ("cached", "online"):
        run = trainer_for(cfg_for(setup, tmp_path / ref, method=method, reference=ref, epochs=2, beta=4.0)).run()
        runs[ref] = [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert runs["cached"] == pytest.approx(runs["online"], rel=1e-6, abs=1e-6)
    if method == "tnpo":  # (2/b) log 2 per token at theta = ref
        assert runs["cached"][0] == pytest.approx(2 / 4.0 * math.log(2), rel=1e-6)


class _Crash(Exception):
    pass


def _run_interrupted(cfg, after_step: int):
    """Train until the checkpoint of `after_step` is written, crash, then resume in a new trainer."""
    trainer = trainer_for(cfg)
    real = trainer.train_step

    def step():
        if trainer.step == after_step:
            raise _Crash
        return real()
    trainer.train_step = step
    with pytest.raises(_Crash):
        trainer.run()
    resumed = Trainer(cfg, METHODS[cfg.method], resume=True)
    return resumed, resumed.run()


def test_pdu_dual_variable_moves_once_per_step_and_resumes_exactly(setup, tmp_path):
    kw = dict(method="pdu", batch_size=2, grad_accum=2, epochs=4, save_every_steps=1, retain_weight=2.0,
              pdu_eps=0.2, pdu_dual_lr=0.5, pdu_warmup_epochs=1.0)
    full = trainer_for(cfg_for(setup, tmp_path / "full", **kw))
    run = full.run()
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    # lambda_{k+1} = max(0, lambda_k + 0.5 (NLL_k - 0.2)) from the window's retain NLL, once per
    # optimizer step (2 micro-batches each), after one epoch (2 steps) of warm-up
    lam, spe = 2.0, full.steps_per_epoch
    assert spe == 2
    for k, r in enumerate(records):
        assert r["pdu_lambda"] == pytest.approx(lam, rel=1e-6)
        assert r["loss"] == pytest.approx(r["forget_loss"] + lam * r["retain_loss"], rel=1e-5)
        if k >= spe:
            lam = max(0.0, lam + 0.5 * (r["retain_loss"] - 0.2))
    assert full.method_state["pdu_lambda"] == pytest.approx(lam, rel=1e-6)
    assert records[-1]["pdu_lambda"] != 2.0
    resumed, run_b = _run_interrupted(cfg_for(setup, tmp_path / "killed", **kw), after_step=5)
    assert resumed.method_state["pdu_lambda"] == full.method_state["pdu_lambda"]  # restored, then stepped alike
    wa, wb = weights(run), weights(run_b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    again = [json.loads(x)["pdu_lambda"] for x in (run_b / "metrics.jsonl").read_text().splitlines()]
    assert again == [r["pdu_lambda"] for r in records]


RMU = dict(method="rmu", rmu_layer=0, rmu_params=r"layers\.0\.mlp\.down_proj\.", rmu_steering=4.0,
           retain_weight=10.0, lr=1e-2, epochs=3, save_every_steps=1)


def test_rmu_trains_only_its_tensors_against_their_starting_values(setup, tmp_path):
    trainer = trainer_for(cfg_for(setup, tmp_path / "rmu", **RMU))
    name = "model.layers.0.mlp.down_proj.weight"
    assert [n for n, p in trainer.model.named_parameters() if p.requires_grad] == [name]
    # the frozen reference keeps the starting value of that one tensor, not a copy of the model
    assert trainer.frozen.copy is None and len(trainer.frozen.start) == 1
    start = trainer.frozen.start[0][1].clone()
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    run = trainer.run()
    after = weights(run)
    assert [k for k in after if not torch.equal(before[k], after[k])] == [name]
    assert torch.equal(trainer.frozen.start[0][1], start)  # swapped in and out, never overwritten
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["retain_loss"] == 0.0 and records[-1]["retain_loss"] > 0  # frozen = model at the start
    assert records[-1]["forget_loss"] < records[0]["forget_loss"]  # activations move toward c u
    u = trainer.method_state["rmu_vector"]
    assert u.norm().item() == pytest.approx(1.0, abs=1e-6) and (u >= 0).all()  # uniform: U[0,1) normalised


def test_rmu_vector_is_restored_from_the_checkpoint(setup, tmp_path):
    cfg = cfg_for(setup, tmp_path / "rmu", **RMU)
    trainer = trainer_for(cfg)
    real = trainer.train_step

    def step():
        if trainer.step == 1:
            raise _Crash
        return real()
    trainer.train_step = step
    with pytest.raises(_Crash):
        trainer.run()
    path = tmp_path / "rmu" / "checkpoint" / "state.json"
    state = json.loads(path.read_text())
    assert torch.equal(torch.tensor(state["method"]["rmu_vector"]), trainer.method_state["rmu_vector"])
    state["method"]["rmu_vector"] = [0.5] * len(state["method"]["rmu_vector"])  # not what the seed draws
    path.write_text(json.dumps(state))
    resumed = Trainer(cfg, METHODS["rmu"], resume=True)
    assert resumed.method_state["rmu_vector"].tolist() == [0.5] * len(state["method"]["rmu_vector"])


def test_rmu_with_lora_uses_the_adapter_disabled_model(setup, tmp_path):
    cfg = cfg_for(setup, tmp_path / "lora", **{**RMU, "rmu_params": r"layers\.0\.mlp\.down_proj\.lora_"},
                  lora_r=4, lora_alpha=8, lora_target_modules=["down_proj"])
    trainer = trainer_for(cfg)
    trained = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert len(trained) == 2 and all("layers.0.mlp.down_proj.lora_" in n for n in trained)  # A and B of block 0
    assert trainer.frozen.lora and trainer.frozen.copy is None and not trainer.frozen.start
    records = [json.loads(x) for x in (trainer.run() / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["retain_loss"] == pytest.approx(0.0, abs=1e-10) and records[-1]["retain_loss"] > 0


def test_rmu_refuses_parameters_it_cannot_train(setup, tmp_path):
    with pytest.raises(NpoError, match="matches none of the"):
        trainer_for(cfg_for(setup, tmp_path / "a", **{**RMU, "rmu_params": "no_such_weight"}))
    with pytest.raises(NpoError, match="do not depend on"):  # block 1 is after the steered block 0
        trainer_for(cfg_for(setup, tmp_path / "b", **{**RMU, "rmu_params": r"layers\.1\.mlp"}))
    with pytest.raises(NpoError, match="decoder blocks"):
        trainer_for(cfg_for(setup, tmp_path / "c", **{**RMU, "rmu_layer": 5}))
    with pytest.raises(ConfigError, match="rmu_params"):
        cfg_for(setup, tmp_path / "d", **{**RMU, "rmu_params": "layers.(5"})


def test_max_steps_and_constant_schedule(setup, tmp_path):
    trainer = trainer_for(cfg_for(setup, tmp_path / "c", method="ga", max_steps=3, epochs=1, lr_schedule="constant"))
    records = [json.loads(x) for x in (trainer.run() / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3] and {r["lr"] for r in records} == {1e-3}
