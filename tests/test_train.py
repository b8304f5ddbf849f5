"""The trainer: NPO lowers forget log-probs, accumulation is exact, the cached reference equals the
online one, LoRA with an adapter-disabled reference, and the CLI end to end."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from helpers import qa_rows, save_tiny_model, write_jsonl
from npo.config import build
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
