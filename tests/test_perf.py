"""The speed work keeps results: the labelled log-prob function against cross_entropy, the fast greedy
decoder against `model.generate` token for token, the two-pass argmax against argmax, fused AdamW
against torch's per-tensor loop, the 4-bit option's refusals, and what the commands import."""

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from helpers import make_model, save_tiny_model, write_tofu_layout
from npo.eval.decode import fast_greedy_ok, first_argmax, greedy_decode
from npo.eval.scoring import generate, prompt_ids
from npo.logprobs import _TargetLogp

# ----------------------------------------------------------------------------- log-probs


def test_target_logp_equals_cross_entropy_values_and_gradients():
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(37, 300, generator=g) * 4).requires_grad_()
    targets = torch.randint(0, 300, (37,), generator=g)
    upstream = torch.randn(37, generator=g)
    ours = _TargetLogp.apply(logits, targets)
    (grad_ours,) = torch.autograd.grad(ours, logits, upstream)
    ref = -F.cross_entropy(logits, targets, reduction="none")
    (grad_ref,) = torch.autograd.grad(ref, logits, upstream)
    assert torch.equal(ours.detach(), ref.detach())  # the same log-softmax kernel
    # by hand: d logp_i / d z_ij = onehot_ij - softmax_ij
    by_hand = upstream[:, None] * (F.one_hot(targets, 300) - torch.softmax(logits.detach(), -1))
    assert torch.allclose(grad_ours, grad_ref, atol=1e-6) and torch.allclose(grad_ours, by_hand, atol=1e-6)


def test_target_logp_refuses_a_second_backward():
    logits = torch.randn(4, 10, requires_grad=True)
    out = _TargetLogp.apply(logits, torch.tensor([1, 2, 3, 4])).sum()
    out.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="already backpropagated"):
        out.backward()


# ----------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("vocab", [1000, 128, 100, 3])
def test_first_argmax_is_argmax_with_ties_first(vocab):
    g = torch.Generator().manual_seed(vocab)
    x = torch.randint(0, 5, (64, vocab), generator=g).float()  # many ties
    assert torch.equal(first_argmax(x), x.argmax(-1))
    y = torch.randn(9, vocab, generator=g)
    y[0, -1] = 99.0  # the largest value in the last (short) block
    y[1, :] = 1.0  # all equal: index 0
    assert torch.equal(first_argmax(y), y.argmax(-1))
    assert first_argmax(y)[0] == vocab - 1 and first_argmax(y)[1] == 0


def _batch(tok, n=6):
    texts = ["Where was Ana Varga born?", "Omar Ade", "Who wrote the book? It was written", "The quick brown fox",
             "Question: What does Omar Ade write?\nAnswer:", "Lisbon"][:n]
    side, tok.padding_side = tok.padding_side, "left"
    batch = tok([t for t in texts], return_tensors="pt", padding=True)
    tok.padding_side = side
    return batch


def _plain(model, batch, new, eos, pad):
    out = model.generate(**batch, max_new_tokens=new, do_sample=False, eos_token_id=eos, pad_token_id=pad)
    return out[:, batch["input_ids"].shape[1]:]


def _rows(tokens, pad):
    return [[t for t in row.tolist() if t != pad] for row in tokens]


def test_greedy_decode_gives_generates_tokens_with_rows_stopping_at_different_steps(tokenizer):
    model = make_model(len(tokenizer), seed=3)
    batch, pad = _batch(tokenizer), tokenizer.pad_token_id
    free = _plain(model, batch, 14, None, pad)
    # an "EOS" that some rows emit early and others later or never, so rows leave the batch at different steps
    first_seen = {}
    for r, row in enumerate(free.tolist()):
        for j, t in enumerate(row):
            first_seen.setdefault(t, {}).setdefault(r, j)
    eos = max(first_seen, key=lambda t: (len(set(first_seen[t].values())), -min(first_seen[t].values())))
    plain = _plain(model, batch, 14, eos, pad)
    ours = greedy_decode(model, batch["input_ids"], batch["attention_mask"], 14, eos, pad)
    assert _rows(ours, pad) == _rows(plain, pad)
    assert ours.shape == plain.shape
    stops = {len(r) for r in _rows(ours, pad)}
    assert len(stops) > 1, "the test should see rows finish at different steps"
    # without EOS every row runs to the limit, as generate's do
    assert torch.equal(greedy_decode(model, batch["input_ids"], batch["attention_mask"], 14, None, pad), free)


def test_generate_texts_equal_plain_generate_and_processors_fall_back(tokenizer):
    model = make_model(len(tokenizer), seed=5)
    prompts = [tokenizer(t)["input_ids"] for t in ["Where was Ana", "Omar Ade writes", "Who", "The quick brown fox jumps"]]

    def plain_texts(batch_size):
        side, tokenizer.padding_side = tokenizer.padding_side, "left"
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        out = [""] * len(prompts)
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            b = tokenizer.pad({"input_ids": [prompts[i] for i in idx]}, return_tensors="pt")
            new = _plain(model, b, 9, tokenizer.eos_token_id, tokenizer.pad_token_id)
            for i, text in zip(idx, tokenizer.batch_decode(new, skip_special_tokens=True), strict=True):
                out[i] = text.strip()
        tokenizer.padding_side = side
        return out

    assert fast_greedy_ok(model)
    assert generate(model, tokenizer, prompts, 9, 3, "cpu") == plain_texts(3)
    model.generation_config.repetition_penalty = 1.5  # a logits processor: generate() must use model.generate
    assert not fast_greedy_ok(model)
    assert generate(model, tokenizer, prompts, 9, 3, "cpu") == plain_texts(3)


def test_prompt_ids_generation_matches_on_a_saved_model(tmp_path, tokenizer):
    """The TOFU path: prompts as tokenized before their answers, all in one batch."""
    from npo.data.qa import load_qa
    from npo.modeling import load_model, load_tokenizer

    data, path = write_tofu_layout(tmp_path / "data"), save_tiny_model(tmp_path / "m", seed=2)
    model, tok = load_model(str(path), torch.float32).eval(), load_tokenizer(str(path))
    records = load_qa(str(data), "forget10_perturbed") + load_qa(str(data), "retain_perturbed")
    ids = prompt_ids(tok, "qa", records, 128)
    side, tok.padding_side = tok.padding_side, "left"
    b = tok.pad({"input_ids": ids}, return_tensors="pt")
    tok.padding_side = side
    ours = greedy_decode(model, b["input_ids"], b["attention_mask"], 20, tok.eos_token_id, tok.pad_token_id)
    assert _rows(ours, tok.pad_token_id) == _rows(_plain(model, b, 20, tok.eos_token_id, tok.pad_token_id),
                                                  tok.pad_token_id)


# ----------------------------------------------------------------------------- optimizer


def test_adamw_kernels_agree_to_rounding():
    from npo.optim import adamw, param_groups

    finals, start = {}, torch.cat([p.detach().flatten() for p in make_model(120, seed=0).parameters()])
    for impl in ("loop", "foreach", "fused"):
        model = make_model(120, seed=0)
        opt = adamw(param_groups(model, 0.01, True), 1e-3, 1e-8, impl)
        g = torch.Generator().manual_seed(1)
        for _ in range(4):
            for p in model.parameters():
                p.grad = torch.randn(p.shape, generator=g) * 1e-2
            opt.step()
        finals[impl] = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert torch.equal(finals["loop"], finals["foreach"])
    # fused rounds differently in the last bit of some updates: 4 steps of lr 1e-3 move weights by ~4e-3
    assert (finals["fused"] - finals["loop"]).abs().max() < 1e-7
    assert (finals["loop"] - start).abs().max() > 1e-3  # the steps did move the weights


def test_adamw_impl_is_validated():
    from npo.config import build
    from npo.errors import ConfigError

    with pytest.raises(ConfigError, match="adamw_impl"):
        build(None, {"model": "m", "forget": "f", "out": "o", "adamw_impl": "apex"})
    assert build(None, {"model": "m", "forget": "f", "out": "o"}).adamw_impl == "fused"


# ----------------------------------------------------------------------------- 4-bit


def test_four_bit_config_is_nf4_double_quantised():
    from transformers import BitsAndBytesConfig

    from npo.modeling import four_bit_config

    c = BitsAndBytesConfig(**four_bit_config())
    assert (c.load_in_4bit, c.bnb_4bit_quant_type, c.bnb_4bit_use_double_quant, c.bnb_4bit_compute_dtype) == \
        (True, "nf4", True, torch.bfloat16)


def test_load_in_4bit_needs_lora_and_refuses_on_a_cpu_in_one_line(tmp_path):
    data, model = write_tofu_layout(tmp_path / "data"), save_tiny_model(tmp_path / "m")
    base = [sys.executable, "-m", "npo", "unlearn", "--model", str(model), "--data", str(data), "--forget", "forget10",
            "--retain", "retain90", "--out", str(tmp_path / "run"), "template=qa", "load_in_4bit=true"]
    no_lora = subprocess.run(base, capture_output=True, text=True)
    assert no_lora.returncode == 2 and "lora_r" in no_lora.stderr and len(no_lora.stderr.strip().splitlines()) == 1
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the CPU refusal cannot be observed")
    cpu = subprocess.run([*base, "lora_r=4"], capture_output=True, text=True)
    assert cpu.returncode == 2
    line = cpu.stderr.strip().splitlines()[-1]
    assert "load_in_4bit" in line and "CUDA" in line and "Traceback" not in cpu.stderr
    assert not (tmp_path / "run").exists()  # refused before anything was written


# ----------------------------------------------------------------------------- imports


def test_commands_import_only_what_they_use():
    code = ("import sys, torch\n"
            "from npo.runtime import env_info\n"
            "import npo.train, npo.eval.tofu, npo.commands.evaluate, npo.commands.plan, npo.commands.unlearn\n"
            "env_info(0, 'cpu', torch.float32, 'x', 1)\n"
            "print(' '.join(m for m in ('peft', 'matplotlib', 'datasets', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_gpu_benchmark_logic_runs_on_a_cpu():
    """benchmarks/bench_gpu.py --dry-run: the GPU benchmark's step, FLOP count and report on a tiny model."""
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"
    out = subprocess.run([sys.executable, str(script), "--dry-run", "--grouping", "random", "--reference", "online"],
                         capture_output=True, text=True, check=True).stdout
    assert "MFU" in out and "tokens/s" in out and "dry run" in out
