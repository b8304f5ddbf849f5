"""Typed run configuration: dataclasses, YAML presets and `key=value` overrides, validated up front.

Dataclasses rather than pydantic: no extra dependency, and the handful of checks we need read
plainly below. YAML is parsed with `safe_load`, so a config is data and can never import code.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from npo.data.templates import TEMPLATES
from npo.errors import ConfigError


@dataclass
class TrainConfig:
    """Every knob of `npo unlearn` and `npo finetune`. Defaults follow the NPO paper's TOFU recipe
    (Zhang et al. 2024, Sec. 5: AdamW, lr 1e-5, weight decay 0.01, one epoch of warm-up, 10 epochs,
    beta 0.1), except batch sizes, which fit a small machine."""

    # model
    model: str = ""  # local directory or hub id
    gguf_file: str | None = None  # a GGUF file inside `model` (or a path to one)
    tokenizer: str | None = None  # defaults to `model`
    trust_remote_code: bool = False
    allow_pickle: bool = False  # load .bin/.pt weights (pickle can run code); safetensors otherwise
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    gradient_checkpointing: bool = False
    template: str | None = None  # chat | llama2-tofu | qa | raw; default: chat if the tokenizer has one
    max_length: int = 512
    # data: file paths, or split names resolved in `data` (a TOFU-layout directory)
    data: str | None = None
    train: list[str] = field(default_factory=list)  # finetune only: one or more sets, concatenated
    forget: str = ""
    retain: str | None = None
    idk: str | None = None  # refusals for idk_rt / dpo*, one per line; default: `idontknow.jsonl` in `data`
    # qa: question/answer records; text: raw-text corpora (.txt / .json lists, MUSE's layout) cut into
    # max_length windows with every token labelled (npo/data/text.py)
    data_format: str = "qa"
    # method (unlearn only)
    method: str = "npo_rt"
    beta: float = 0.1  # inverse temperature of NPO, DPO, KTO and TNPO (the NPO paper; TNPO's authors use 4)
    gamma: float = 0.0
    forget_weight: float = 1.0
    retain_weight: float = 1.0
    reference: str = "cached"  # cached | online (recompute with a frozen copy every step; for checks)
    # the original code's choices, which the NPO paper's numbers depend on (docs/tofu.md; configs/tofu/paper/)
    schedule: str = "epochs"  # epochs: ceil(N/window) steps per pass | official: the NPO authors' (floor, lr 0 first)
    retain_pairing: str = "fresh"  # fresh: a new retain window each step | fixed / cyclic: forget i always meets
    # one retain example, (i + r_i) mod R with r_i drawn after manual_seed(i) (the NPO authors) / i mod R (MUSE)
    token_mean: str = "window"  # window: token means over the step's window | micro: per micro-batch, then averaged
    kl: str = "answer"  # answer: KL over retain answer tokens | official: over every position padded to max_length
    # objectives beyond NPO (docs/methods.md); each default names its source
    wga_alpha: float = 1.0  # WGA (Wang et al. 2025): exponent of the token weight p^alpha; open-unlearning's TOFU value (the authors' code defaults to 5)
    satimp_beta1: float = 5.0  # SatImp (Yang et al. 2025): exponent of p (saturation); the authors' recommended value
    satimp_beta2: float = 0.1  # SatImp: exponent of 1 - p (importance); the authors' recommended value (open-unlearning: 1)
    wtnpo_alpha: float = 1.5  # WTNPO (Wang et al. 2025): exponent of the token weight p^alpha; the authors' code default
    undial_gamma: float = 5.0  # UNDIAL (Dong et al. 2025): how far the target's reference logit is lowered; the authors' code default
    ceu_ignore_first: int = 1  # CE-U (Yang 2025): answer tokens left out at the start of each answer, as in its training settings
    pdu_eps: float = 0.3  # PDU (Entesari et al. 2025): bound on the retain NLL; the authors' TOFU runs. Initial lambda: retain_weight
    pdu_dual_lr: float = 5.0  # PDU: step size of the dual ascent on lambda; the authors' TOFU runs
    pdu_warmup_epochs: float = 5.0  # PDU: epochs before lambda moves; the authors' TOFU runs (5 of 10)
    rmu_layer: int = 7  # RMU (Li et al. 2024, WMDP): decoder block (0-based) whose output is steered; their layer_id
    rmu_params: str = r"layers\.(5|6|7)\.mlp\.down_proj\."  # RMU: regex of the parameter names trained; WMDP's layers 5-7 MLP down-projections
    rmu_steering: float = 6.5  # RMU: steering coefficient c; WMDP's Zephyr-7B run (their CLI default: 20). Retain alpha: retain_weight
    rmu_vector: str = "uniform"  # RMU: uniform (U[0,1) normalised, as the WMDP code) | gaussian (a uniform direction)
    rmu_positions: str = "labelled"  # RMU: tokens averaged over: labelled | all (every padded position, as the WMDP code)
    # optimisation
    epochs: int = 10
    lr: float = 1e-5
    batch_size: int = 8  # forget examples per step per process, each paired with a retain example
    grad_accum: int = 1
    weight_decay: float = 0.01
    decay_norms_and_biases: bool = True  # false: HF Trainer's groups (no decay on biases and norm weights)
    warmup_epochs: float = 1.0
    max_grad_norm: float | None = None
    seed: int = 0
    max_steps: int = 0  # optimizer steps to train, overriding epochs (0: epochs decide); RMU's WMDP run: 150
    lr_schedule: str = "linear"  # linear (decay to 0, the NPO recipe) | constant (after the warm-up; RMU's WMDP code)
    adam_eps: float = 1e-8  # AdamW's epsilon: torch's default (RMU's WMDP code used transformers' AdamW, 1e-6)
    adamw_impl: str = "fused"  # fused (one kernel, ~4x faster on CPU) | foreach | loop: torch's AdamW kernels; same update up to rounding
    # LoRA (off when lora_r = 0)
    lora_r: int = 0
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: list[str] | None = None  # default: PEFT's choice for the architecture
    load_in_4bit: bool = False  # LoRA on an NF4-quantised base (bitsandbytes, CUDA only; pip install 'npo[gpu4bit]')
    save_merged: bool = True  # merge the adapter into the saved model (else save the adapter only)
    # run
    out: str = ""
    overwrite: bool = False
    save_every_steps: int = 0  # checkpoint cadence for --resume (0: at each epoch end)
    nonfinite: str = "stop"  # stop | skip
    max_skipped_steps: int = 10
    logits: str = "labelled"  # labelled | full (naive path: LM head over every position)
    # evaluation hook
    eval_every_epochs: int = 0
    eval_benchmark: str = "tofu"
    eval_data: str | None = None  # TOFU-layout directory with the eval sets (default: `data`)
    eval_forget_split: str | None = None  # e.g. forget10 (default: `forget` when it is a split name)
    eval_retain_logs: str | None = None
    eval_protocol: str = "full"
    eval_max_new_tokens: int = 200
    eval_batch_size: int = 64  # scoring and generation batch (64: measured, BENCHMARKS.md section 2)
    eval_generation: str = "greedy"  # greedy | sampled (the NPO authors' evaluator: sampling after manual_seed(0))


def _methods() -> tuple[str, ...]:
    from npo.methods import METHODS

    return tuple(METHODS)


def _benchmarks() -> tuple[str, ...]:
    from npo.eval.benchmarks import BENCHMARKS

    return tuple(BENCHMARKS)


CHOICES = {
    "dtype": ("auto", "float32", "bfloat16", "float16"),
    "template": (None, *TEMPLATES),
    "data_format": ("qa", "text"),
    "reference": ("cached", "online"),
    "nonfinite": ("stop", "skip"),
    "logits": ("labelled", "full"),
    "eval_protocol": ("full", "legacy300"),
    "schedule": ("epochs", "official"),
    "retain_pairing": ("fresh", "fixed", "cyclic"),
    "token_mean": ("window", "micro"),
    "kl": ("answer", "official"),
    "eval_generation": ("greedy", "sampled"),
    "lr_schedule": ("linear", "constant"),
    "adamw_impl": ("fused", "foreach", "loop"),
    "rmu_vector": ("uniform", "gaussian"),
    "rmu_positions": ("labelled", "all"),
}
POSITIVE = ("max_length", "epochs", "lr", "batch_size", "grad_accum", "beta", "eval_batch_size",
            "eval_max_new_tokens", "adam_eps", "rmu_steering")
NON_NEGATIVE = ("weight_decay", "warmup_epochs", "lora_r", "lora_dropout", "save_every_steps", "eval_every_epochs",
                "max_skipped_steps", "forget_weight", "retain_weight", "wga_alpha", "satimp_beta1", "satimp_beta2",
                "wtnpo_alpha", "undial_gamma", "ceu_ignore_first", "pdu_eps", "pdu_dual_lr", "pdu_warmup_epochs",
                "rmu_layer", "max_steps")


def _coerce(name: str, value, hint, where: str):
    """Check one value against its annotation; ints are accepted where floats are expected."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(name, value, inner[0], where)
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}'{name}' must be a list of strings, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}'{name}' must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}'{name}' must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}'{name}' must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ConfigError(f"{where}'{name}' must be a string, got {value!r}")
        return str(value)
    return value


def _hints():
    return typing.get_type_hints(TrainConfig)


def from_dict(values: dict, where: str = "", base: TrainConfig | None = None) -> TrainConfig:
    hints = _hints()
    cfg = dataclasses.replace(base) if base else TrainConfig()
    for key, value in values.items():
        if key not in hints:
            close = difflib.get_close_matches(str(key), hints, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{where}unknown config key '{key}'{hint}")
        setattr(cfg, key, _coerce(key, value, hints[key], where))
    return cfg


def parse_overrides(pairs: list[str]) -> dict:
    """`key=value` strings; values are read as YAML scalars (`lr=3e-4`, `lora_r=8`, `x=null`)."""
    out = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{pair}' must look like key=value")
        value = yaml.safe_load(raw) if raw else ""
        if isinstance(value, str) or value is None or isinstance(value, bool | int | float | list):
            out[key.strip()] = value
        else:
            raise ConfigError(f"override '{pair}': value must be a scalar or a list")
    return out


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values")
    return values


def load_preset(path: str | Path, seen: tuple[Path, ...] = ()) -> tuple[dict, str]:
    """A preset's values over those of its `base:` preset (a path relative to it), and a name for
    messages. Presets share a recipe this way instead of restating it."""
    path = Path(path)
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'base' presets form a cycle ({' -> '.join(str(p) for p in (*seen, path))})")
    values = load_yaml(path)
    base = values.pop("base", None)
    if base is None:
        return values, str(path)
    if not isinstance(base, str):
        raise ConfigError(f"{path}: 'base' must be the path of another preset, got {base!r}")
    inherited, _ = load_preset(path.parent / base, (*seen, path.resolve()))
    return {**inherited, **values}, str(path)


def build(config_file: str | list[str] | None = None, overrides: dict | None = None) -> TrainConfig:
    """Preset file(s), each over the previous one, then overrides (CLI flags and key=value pairs), then
    validation."""
    cfg = TrainConfig()
    files = [config_file] if isinstance(config_file, str) else list(config_file or [])
    for path in files:
        values, name = load_preset(path)
        cfg = from_dict(values, where=f"{name}: ", base=cfg)
    cfg = from_dict(overrides or {}, base=cfg)
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    for name, allowed in {"method": _methods(), "eval_benchmark": _benchmarks(), **CHOICES}.items():
        if getattr(cfg, name) not in allowed:
            shown = ", ".join(str(a) for a in allowed if a is not None)
            raise ConfigError(f"'{name}' is {getattr(cfg, name)!r}; choose from {shown}")
    for name in POSITIVE:
        if not getattr(cfg, name) > 0:
            raise ConfigError(f"'{name}' must be positive, got {getattr(cfg, name)}")
    for name in NON_NEGATIVE:
        if getattr(cfg, name) < 0:
            raise ConfigError(f"'{name}' must not be negative, got {getattr(cfg, name)}")
    if cfg.max_grad_norm is not None and cfg.max_grad_norm <= 0:
        raise ConfigError(f"'max_grad_norm' must be positive or null, got {cfg.max_grad_norm}")
    if cfg.load_in_4bit and not cfg.lora_r:
        raise ConfigError("'load_in_4bit' trains LoRA adapters on a frozen 4-bit base: set 'lora_r' (e.g. 16)")
    try:
        re.compile(cfg.rmu_params)
    except re.error as err:
        raise ConfigError(f"'rmu_params' is not a valid regular expression: {err}") from None


def to_dict(cfg: TrainConfig) -> dict:
    return dataclasses.asdict(cfg)


def save(cfg: TrainConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
