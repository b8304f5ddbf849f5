"""`npo plan`: parameter counts against real transformers/PEFT models, each memory component of a tiny
shape derived by hand, and the command's output and bad input."""

import json

import pytest

from helpers import make_model, save_tiny_model
from npo.errors import NpoError
from npo.plan import (
    GIB,
    KNOWN,
    Setting,
    estimate,
    load_shape,
    lora_parameters,
    parameters,
    parse_size,
    shape_from_config,
)

TINY = dict(vocab_size=100, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
            head_dim=4, intermediate_size=16, tie_word_embeddings=False)


@pytest.mark.parametrize("tied", [False, True])
def test_parameter_count_equals_the_real_models(tied):
    config = {**TINY, "tie_word_embeddings": tied}
    model = make_model(config["vocab_size"], **{k: v for k, v in config.items() if k != "vocab_size"})
    assert parameters(shape_from_config(config, "x"))["total"] == sum(p.numel() for p in model.parameters())


def test_lora_count_equals_peft_with_its_default_targets():
    from peft import LoraConfig, get_peft_model

    model = make_model(100, **{k: v for k, v in TINY.items() if k != "vocab_size"})
    peft_model = get_peft_model(model, LoraConfig(r=4, task_type="CAUSAL_LM"))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert lora_parameters(shape_from_config(TINY, "x"), 4) == trainable


def test_known_shapes_have_their_published_sizes():
    # 8.03B (Llama-3.1-8B), 1.24B (Llama-3.2-1B, tied), 135M (SmolLM2, tied), 6.74B (Llama-2-7B)
    sizes = {k: parameters(s)["total"] for k, s in KNOWN.items()}
    assert sizes["llama-3.1-8b"] == 8_030_261_248
    assert sizes["llama-3.2-1b"] == 1_235_814_400
    assert sizes["smollm2-135m"] == 134_515_008
    assert sizes["llama-2-7b"] == 6_738_415_616


def test_each_component_of_a_tiny_shape_by_hand():
    s = shape_from_config(TINY, "x")
    # H=8, A=2*4=8, K=1*4=4, I=16, V=100, 2 layers, untied:
    # per layer linear 8*8*2 + 8*4*2 + 3*8*16 = 128 + 64 + 384 = 576 -> 1152; norms 2*2*8 + 8 = 40;
    # embed = head = 800: N = 1152 + 40 + 1600 = 2792
    n = 2792
    cpu = estimate(s, Setting("full"), online_ref=False, kl=False, batch=3, length=10, answer=4, gpu=False)
    assert (cpu["weights"], cpu["gradients"], cpu["optimizer"], cpu["reference"]) == (4 * n, 4 * n, 8 * n, 0)
    # activations per token and layer: 4*6*8 + 4*(4*8 + 3*4 + 4*16 + 2*8 (GQA repeat)) = 192 + 496 = 688 bytes;
    # 3*10 tokens, 2 layers: 41280. Logits: 2 tensors of 3*4 labelled x 100 fp32 = 9600
    assert cpu["activations"] == 30 * 688 * 2 and cpu["logits"] == 2 * 12 * 100 * 4
    assert cpu["overhead"] == 0 and cpu["total"] == 16 * n + 41280 + 9600
    gpu = estimate(s, Setting("full", checkpointing=True), online_ref=True, kl=True, batch=3, length=10, answer=4,
                   gpu=True)
    # checkpointing: fp32 layer inputs 30 * 4*8 * 2 layers = 1920, plus one layer at bf16 width:
    # 4*6*8 + 2*(32 + 12 + 64 + 16) = 192 + 248 = 440 per token -> 13200; KL: 4 tensors -> 19200
    assert gpu["activations"] == 1920 + 13200 and gpu["logits"] == 4 * 12 * 100 * 4
    assert gpu["reference"] == 4 * n and gpu["overhead"] == GIB  # a frozen fp32 copy without LoRA
    lora = estimate(s, Setting("lora", lora_r=4), online_ref=True, kl=True, batch=3, length=10, answer=4, gpu=True)
    r = lora_parameters(s, 4)  # 2 layers x 4 x ((8+8) + (8+4)) = 224
    assert r == 224 and lora["weights"] == 2 * n + 4 * r and lora["reference"] == 0  # adapter off: no copy
    assert (lora["gradients"], lora["optimizer"]) == (4 * r, 8 * r)
    q = estimate(s, Setting("4bit", lora_r=4, four_bit=True), online_ref=False, kl=False, batch=3, length=10,
                 answer=4, gpu=True)
    assert q["weights"] == pytest.approx(1152 * (4 + 8 / 64 + 32 / 16384) / 8 + 2 * (1600 + 40) + 4 * r)
    sharded = estimate(s, Setting("full"), online_ref=False, kl=False, batch=3, length=10, answer=4, gpu=True,
                       gpus=4, sharded=True)
    # sharded over 4 GPUs: weights, gradients, optimizer / 4; activations stay per GPU (30 tokens x 440 x 2 layers)
    assert (sharded["weights"], sharded["gradients"], sharded["optimizer"]) == (n, n, 2 * n)
    assert sharded["activations"] == 30 * 440 * 2


def test_long_answers_are_chunked_in_the_head():
    s = KNOWN["llama-3.1-8b"]
    e = estimate(s, Setting("x"), online_ref=False, kl=False, batch=64, length=512, answer=256, gpu=True)
    assert e["logits"] == 2 * 1024 * 128256 * 4  # 16384 labelled tokens, recomputed in chunks of 1024


@pytest.mark.parametrize("text,value", [("40GB", 40 * GIB), ("80GiB", 80 * GIB), ("24g", 24 * GIB),
                                        ("512MiB", 512 * 2**20), ("16", 16 * GIB)])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["forty", "-3GB", "0", "GB"])
def test_parse_size_refuses(text):
    with pytest.raises(NpoError, match="--gpu-mem"):
        parse_size(text)


def test_load_shape_from_a_saved_model_and_bad_paths(tmp_path):
    path = save_tiny_model(tmp_path / "m")
    cfg = json.loads((path / "config.json").read_text())
    assert load_shape(str(path)) == shape_from_config(cfg, "x") == load_shape(str(path / "config.json"))
    with pytest.raises(NpoError, match="neither a model directory"):
        load_shape(str(tmp_path / "nope"))
    (tmp_path / "bad.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(NpoError, match=r"bad.json: .*missing vocab_size"):
        load_shape(str(tmp_path / "bad.json"))


def test_plan_command_says_what_fits_8b_npo_on_one_40gb_gpu(capsys):
    from npo.cli import main

    assert main(["plan", "--model", "llama-3.1-8b", "--method", "npo_rt", "--batch-size", "4"]) == 0
    rows = {line.split("  ")[0].strip(): line.split()[-1] for line in capsys.readouterr().out.splitlines()
            if line.startswith(("full", "LoRA"))}
    assert rows["full"] == "no" and rows["LoRA r=16 + checkpointing"] == "yes"
    assert rows["LoRA r=16, 4-bit base + checkpointing"] == "yes"


def test_plan_command_bad_input_is_one_line(capsys):
    from npo.cli import main

    assert main(["plan", "--model", "/no/such/model"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "/no/such/model" in err[0]
    assert main(["plan", "--model", "llama-3.1-8b", "--gpu-mem", "lots"]) == 2
    assert main(["plan", "--model", "llama-3.1-8b", "--answer-tokens", "999"]) == 2
