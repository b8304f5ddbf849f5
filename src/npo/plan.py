"""Memory a training run needs, by component, from the model's shape alone (`npo plan`).

Pure arithmetic on a Llama-family shape (hidden H, layers, query heads x head dim A, key/value heads x
head dim K, MLP width I, vocabulary V), counted the way npo trains:
- weights: full fine-tuning keeps fp32 master weights (bf16 arithmetic under autocast on a bf16
  GPU, npo.modeling.choose_dtype); LoRA keeps the frozen base in bf16 (fp32 on a CPU); a 4-bit base
  stores its linear layers in NF4 with double-quantised scales (4 + 8/64 + 32/(64*256) bits per
  weight) and the embeddings, LM head and norms in bf16; adapters are fp32;
- gradients (fp32) and AdamW's two moments (fp32) of the trained parameters;
- the reference: cached log-probs cost nothing; a method with an online reference (KL terms) keeps
  a frozen copy of the weights without LoRA, and nothing with LoRA (the adapter is switched off);
- activations kept for backward per token and layer: 6H elements at fp32 (the residual stream and
  the norms' internals) plus 4A + 3K + 4I (+2A when keys/values are repeated for grouped-query
  attention) at the arithmetic's width (SDPA attention: no length x length scores); with gradient
  checkpointing each layer keeps only its fp32 input, plus one layer's full set in backward. The
  terms are backpropagated one after the other, so one term's batch counts;
- the LM head on labelled tokens only, fp32: twice [labelled tokens, V] while a log-prob term's
  forward runs (chunks of 1024 tokens are recomputed in backward instead), four such tensors for a
  KL term (its log-softmax, the reference's, and two temporaries).
GPU totals add a fixed 1 GiB for the CUDA context and allocator slack. Multi-GPU: data parallel
replicates everything; sharded (FSDP) divides weights, gradients and optimizer state by the GPU count.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from npo.errors import NpoError

GIB = 2**30
NF4_BYTES = (4 + 8 / 64 + 32 / (64 * 256)) / 8  # bytes per weight of a double-quantised NF4 linear
CUDA_OVERHEAD = 1.0 * GIB
LOGIT_CHUNK = 1024  # labelled tokens per LM-head chunk with gradients (npo.logprobs.token_logprobs)


@dataclass(frozen=True)
class Shape:
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    tied: bool

    @property
    def attn(self) -> int:  # A: query width
        return self.heads * self.head_dim

    @property
    def kv(self) -> int:  # K: key (and value) width
        return self.kv_heads * self.head_dim


# published configurations (config.json of each model), so that `npo plan` works without a download
KNOWN = {
    "llama-2-7b": Shape(32000, 4096, 32, 32, 32, 128, 11008, False),
    "llama-3.1-8b": Shape(128256, 4096, 32, 32, 8, 128, 14336, False),
    "llama-3.2-1b": Shape(128256, 2048, 16, 32, 8, 64, 8192, True),
    "mistral-7b": Shape(32000, 4096, 32, 32, 8, 128, 14336, False),  # also Zephyr-7B
    "phi-1.5": Shape(51200, 2048, 24, 32, 32, 64, 8192, False),  # (its MLP is not gated: an upper bound)
    "smollm2-135m": Shape(49152, 576, 30, 9, 3, 64, 1536, True),
}


def shape_from_config(config: dict, where: str) -> Shape:
    """A Shape from a transformers config.json (Llama, Mistral, Qwen2 and similar keys)."""
    missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                           "intermediate_size") if k not in config]
    if missing:
        raise NpoError(f"{where}: not a decoder config npo can size (missing {', '.join(missing)})")
    heads = config["num_attention_heads"]
    return Shape(vocab=config["vocab_size"], hidden=config["hidden_size"], layers=config["num_hidden_layers"],
                 heads=heads, kv_heads=config.get("num_key_value_heads") or heads,
                 head_dim=config.get("head_dim") or config["hidden_size"] // heads,
                 intermediate=config["intermediate_size"], tied=bool(config.get("tie_word_embeddings", False)))


def load_shape(model: str) -> Shape:
    """A known name, a model directory or a config.json."""
    if model.lower() in KNOWN:
        return KNOWN[model.lower()]
    path = Path(model).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise NpoError(f"--model {model}: neither a model directory, a config.json nor a known shape "
                       f"({', '.join(KNOWN)})")
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise NpoError(f"{path}: cannot read it as JSON ({err})") from None
    return shape_from_config(config.get("text_config", config), str(path))


def parameters(s: Shape) -> dict[str, int]:
    """Parameter counts: embeddings, LM head (0 when tied), the blocks' linear layers, norms."""
    per_layer = s.hidden * s.attn * 2 + s.hidden * s.kv * 2 + 3 * s.hidden * s.intermediate
    linear = s.layers * per_layer
    norms = s.layers * 2 * s.hidden + s.hidden
    embed = s.vocab * s.hidden
    head = 0 if s.tied else s.vocab * s.hidden
    return {"embed": embed, "head": head, "linear": linear, "norms": norms, "total": embed + head + linear + norms}


def lora_parameters(s: Shape, r: int) -> int:
    """PEFT's default targets for Llama-family models: q_proj and v_proj of every layer."""
    return s.layers * r * ((s.hidden + s.attn) + (s.hidden + s.kv))


def activation_bytes_per_token(s: Shape, width: int) -> int:
    """Bytes kept for backward per token and layer (module docstring); `width` 2 (bf16) or 4 (fp32)."""
    gqa = 2 * s.attn if s.kv_heads < s.heads else 0
    return 4 * 6 * s.hidden + width * (4 * s.attn + 3 * s.kv + 4 * s.intermediate + gqa)


@dataclass(frozen=True)
class Setting:
    name: str
    lora_r: int = 0
    four_bit: bool = False
    checkpointing: bool = False


def estimate(s: Shape, setting: Setting, *, online_ref: bool, kl: bool, batch: int, length: int,
             answer: int, gpu: bool, gpus: int = 1, sharded: bool = False) -> dict[str, float]:
    """Bytes per device of each component and their total (see the module docstring)."""
    p = parameters(s)
    lora = lora_parameters(s, setting.lora_r) if setting.lora_r else 0
    width = 2 if gpu else 4  # the arithmetic: bf16 autocast / frozen bf16 base on a GPU, fp32 on a CPU
    if setting.four_bit:
        weights = NF4_BYTES * p["linear"] + 2 * (p["embed"] + p["head"] + p["norms"]) + 4 * lora
    elif setting.lora_r:
        weights = width * p["total"] + 4 * lora
    else:
        weights = 4 * p["total"]
    trained = lora if setting.lora_r else p["total"]
    reference = weights if online_ref and not setting.lora_r else 0.0
    tokens = batch * length
    if setting.checkpointing:
        acts = tokens * (4 * s.hidden * s.layers + activation_bytes_per_token(s, width))
    else:
        acts = tokens * activation_bytes_per_token(s, width) * s.layers
    labelled = batch * answer
    logits = 4 * s.vocab * (4 * labelled if kl else 2 * min(labelled, LOGIT_CHUNK))
    shard = gpus if sharded else 1
    out = {"weights": weights / shard, "gradients": 4 * trained / shard, "optimizer": 8 * trained / shard,
           "reference": reference / shard, "activations": float(acts), "logits": float(logits),
           "overhead": CUDA_OVERHEAD if gpu else 0.0}
    out["total"] = sum(out.values())
    return out


def settings(lora_r: int, four_bit: bool) -> list[Setting]:
    """Full fine-tuning, LoRA and (on a GPU) LoRA on a 4-bit base, each without and with checkpointing."""
    kinds = [Setting("full"), Setting(f"LoRA r={lora_r}", lora_r)]
    if four_bit:
        kinds.append(Setting(f"LoRA r={lora_r}, 4-bit base", lora_r, four_bit=True))
    return [k2 for k in kinds for k2 in (k, Setting(k.name + " + checkpointing", k.lora_r, k.four_bit, True))]


def parse_size(text: str) -> float:
    """'40GB', '80GiB', '24g' -> bytes (GB and G read as GiB, as GPU memory is quoted)."""
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    try:
        scale = {"g": GIB, "m": 2**20, "t": 2**40}.get(t[-1:])
        value = float(t[:-1]) if scale else float(t) * GIB
    except ValueError:
        raise NpoError(f"--gpu-mem {text!r}: give a size such as 40GB or 80GiB") from None
    value = value * scale if scale else value
    if not math.isfinite(value) or value <= 0:
        raise NpoError(f"--gpu-mem {text!r}: must be a positive size")
    return value
