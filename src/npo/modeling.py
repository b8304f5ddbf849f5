"""Loading and saving models: local directories, hub ids, GGUF files, LoRA adapters.

Safe by default: `trust_remote_code` is off and only safetensors weights load unless the user opts
in (pickle files can execute code when loaded).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch

from npo.data.batches import ensure_pad_token
from npo.errors import ConfigError, NpoError

log = logging.getLogger("npo")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def choose_dtype(requested: str, device_type: str, trains_all_weights: bool = False
                 ) -> tuple[torch.dtype, str | None, str]:
    """(weight dtype, autocast dtype or None, reason), logged and written to env.json.

    On a bf16 GPU, weights that train are kept in fp32 and the arithmetic runs in bf16 under autocast:
    in pure bf16, an AdamW update at lr 1e-5 is below the weights' rounding step and is lost. Frozen
    weights (LoRA's base model, evaluation) are stored in bf16 directly.
    """
    if requested != "auto":
        return DTYPES[requested], None, "requested"
    if device_type == "cuda":
        if not torch.cuda.is_bf16_supported():
            return torch.float32, None, "GPU lacks bf16; fp16 training would need loss scaling"
        if trains_all_weights:
            return torch.float32, "bf16", "GPU supports bf16: fp32 master weights, bf16 autocast"
        return torch.bfloat16, None, "GPU supports bf16; these weights do not train (LoRA base or evaluation)"
    return torch.float32, None, f"{device_type}: bf16 arithmetic is slow and inexact on this device"


def _looks_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or Path(name).exists() or name.count("/") > 1


def _check_weights(path: Path, allow_pickle: bool, pickle_option: str) -> None:
    if not path.is_dir():
        return
    if any(path.glob("*.safetensors")) or any(path.glob("*.gguf")) or allow_pickle:
        return
    if any(path.glob("*.bin")) or any(path.glob("*.pt")) or any(path.glob("*.pth")):
        raise NpoError(f"{path}: holds only pickle weights (.bin/.pt), which can run code when loaded; "
                       f"convert them to safetensors or pass {pickle_option} if you trust the source")


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "tokenizer_config.json")


def _one_line(err: Exception) -> str:
    """A library's multi-line message on one line, whole (its first line alone can stop mid-sentence)."""
    text = " ".join(str(err).split())
    return text if len(text) <= 400 else text[:400] + " ..."


def check_model_path(name: str) -> None:
    if not name:
        raise ConfigError("no model given (set 'model' or pass --model)")
    if _looks_local(name) and not Path(name).expanduser().exists():
        raise NpoError(f"model path does not exist: {name}")


def load_tokenizer(name: str, gguf_file: str | None = None, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    check_model_path(name)
    kwargs = {"trust_remote_code": trust_remote_code}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    local = Path(name).expanduser()
    if local.is_dir() and not gguf_file and not any((local / f).exists() for f in TOKENIZER_FILES):
        raise NpoError(f"cannot load tokenizer '{name}': the directory holds no tokenizer files (none of "
                       f"{', '.join(TOKENIZER_FILES)}); pass the tokenizer's directory as tokenizer=DIR")
    try:
        tok = AutoTokenizer.from_pretrained(name, **kwargs)
    except (OSError, ValueError, KeyError) as err:
        raise NpoError(f"cannot load tokenizer '{name}': {_one_line(err)}") from None
    ensure_pad_token(tok)
    return tok


def four_bit_config(compute_dtype: torch.dtype = torch.bfloat16) -> dict:
    """from_pretrained arguments of a QLoRA base: NF4 weights with double-quantised scales (~0.52
    bytes per weight of the linear layers), arithmetic in `compute_dtype`; the embeddings, LM head
    and norms stay in `compute_dtype` (transformers does not quantise them)."""
    return {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
            "bnb_4bit_compute_dtype": compute_dtype}


def require_4bit() -> None:
    """Refuse `load_in_4bit` where it cannot run, before anything is written."""
    if not torch.cuda.is_available():
        raise NpoError("load_in_4bit: 4-bit bases (bitsandbytes NF4) run on a CUDA GPU only and this machine "
                       "has none; on a CPU train LoRA on the unquantised model (load_in_4bit=false)")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise NpoError("load_in_4bit needs bitsandbytes: pip install 'npo[gpu4bit]'") from None


def _quantization(device_index: int | None):
    """The BitsAndBytesConfig and device map of a 4-bit base."""
    require_4bit()
    from transformers import BitsAndBytesConfig

    index = torch.cuda.current_device() if device_index is None else device_index
    return BitsAndBytesConfig(**four_bit_config()), {"": index}


def load_model(name: str, dtype: torch.dtype, gguf_file: str | None = None, trust_remote_code: bool = False,
               allow_pickle: bool = False, attn: str = "sdpa", pickle_option: str = "allow_pickle=true",
               load_in_4bit: bool = False, device_index: int | None = None):
    """A causal LM from a directory or hub id; a GGUF file is dequantised into a plain model so that
    it trains and saves like any other. `pickle_option`: how the caller's user allows pickle weights.
    `load_in_4bit`: an NF4 base placed on GPU `device_index` (frozen; only LoRA adapters train on it)."""
    import pickle

    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    check_model_path(name)
    _check_weights(Path(name).expanduser(), allow_pickle, pickle_option)
    kwargs = {"dtype": dtype, "trust_remote_code": trust_remote_code, "attn_implementation": attn}
    if load_in_4bit:
        if gguf_file:
            raise ConfigError("load_in_4bit and gguf_file cannot be combined (a GGUF file is dequantised)")
        kwargs["quantization_config"], kwargs["device_map"] = _quantization(device_index)
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    elif not allow_pickle:
        kwargs["use_safetensors"] = True
    try:
        model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    except pickle.UnpicklingError:
        raise NpoError(f"cannot load model '{name}': its pickle weights hold objects other than tensors, which "
                       "torch refuses to load (weights_only=True) because they can run code; convert the "
                       "weights to safetensors") from None
    except SafetensorError as err:
        raise NpoError(f"cannot load model '{name}': a safetensors weights file is truncated or corrupted "
                       f"({_one_line(err)})") from None
    except (OSError, ValueError, RuntimeError, EOFError, KeyError) as err:
        raise NpoError(f"cannot load model '{name}': {_one_line(err)}") from None
    if gguf_file:  # dequantised weights in a plain model (a GGUF-loaded one cannot be saved)
        config = copy.deepcopy(model.config)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn)
        plain.load_state_dict(model.state_dict())
        plain.hf_quantizer = None
        model = plain
    return model


def match_vocab(model, tokenizer) -> None:
    """Grow the embeddings when the tokenizer gained a pad token."""
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))


def add_lora(model, r: int, alpha: int, dropout: float, target_modules: list[str] | None):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                        task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, config)
    except ValueError as err:
        raise ConfigError(f"LoRA: {err}") from None


def is_peft(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "get_base_model")


def is_4bit(model) -> bool:
    base = model.get_base_model() if is_peft(model) else model
    return bool(getattr(base, "is_loaded_in_4bit", False))


def save_model(model, tokenizer, out: Path, merge: bool = True) -> None:
    """safetensors weights + tokenizer; a LoRA model is merged first unless `merge` is false. On a
    4-bit base the adapter is saved alone (merging would round it into the NF4 weights); transformers
    loads such a directory with its base when peft is installed."""
    if is_peft(model) and merge and is_4bit(model):
        log.info("4-bit base: saving the LoRA adapter only (its adapter_config.json names the base model)")
        merge = False
    if is_peft(model) and merge:
        model = model.merge_and_unload()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def load_for_scoring(path: str, device):
    """A saved model and its tokenizer, in eval mode on `device`, in the dtype scoring uses there."""
    tok = load_tokenizer(path)
    dtype, _, _ = choose_dtype("auto", device.type)
    model = load_model(path, dtype).to(device)
    match_vocab(model, tok)
    return model.eval(), tok
