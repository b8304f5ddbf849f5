"""Typed run configuration: dataclasses, YAML presets and `key=value` overrides, validated up front.

Dataclasses rather than pydantic: no extra dependency, and the handful of checks we need read
plainly below. YAML is parsed with `safe_load`, so a config is data and can never import code.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from npo.data.templates import TEMPLATES
from npo.errors import ConfigError
from npo.eval.benchmarks import EVAL_BATCH


def setting(default, help: str):
    """A config field and its one line of help (`npo config` and `--help-config` print it)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Every knob of `npo unlearn` and `npo finetune`. Defaults follow the NPO paper's TOFU recipe
    (Zhang et al. 2024, Sec. 5: AdamW, lr 1e-5, weight decay 0.01, one epoch of warm-up, 10 epochs,
    beta 0.1), except batch sizes, which fit a small machine."""

    # model
    model: str = setting("", "the model to train: a local directory or a hub id")
    gguf_file: str | None = setting(None, "a GGUF file inside `model` (or a path to one), dequantised to train")
    tokenizer: str | None = setting(None, "tokenizer directory or hub id (default: `model`)")
    trust_remote_code: bool = setting(False, "run the model repository's own Python code (off: only transformers' "
                                             "built-in architectures load)")
    allow_pickle: bool = setting(False, "load .bin/.pt weights, which are pickle and can run code (off: safetensors only)")
    dtype: str = setting("auto", "weight dtype; auto: fp32 weights with bf16 autocast on a bf16 GPU, else fp32")
    gradient_checkpointing: bool = setting(False, "recompute activations in the backward pass: less memory, slower steps")
    template: str | None = setting(None, "prompt format (default: chat if the tokenizer has a chat template, else qa)")
    max_length: int = setting(512, "tokens per example (prompt + answer); a longer prompt is refused, a longer answer cut")
    # data: file paths, or split names resolved in `data` (a TOFU-layout directory)
    data: str | None = setting(None, "a TOFU-layout directory in which split names (forget10, retain90...) are resolved")
    train: list[str] = setting([], "finetune only: one or more sets (files or split names), concatenated")
    forget: str = setting("", "the set to unlearn: a file, a split name in `data`, or hf:NAME[:CONFIG]")
    retain: str | None = setting(None, "the set to keep (methods with a retain term): a file, a split name or hf:NAME")
    idk: str | None = setting(None, "refusals for idk_rt / dpo*, one per line (default: idontknow.jsonl in `data`)")
    data_format: str = setting("qa", "qa: question/answer records; text: raw-text corpora (.txt / .json lists, MUSE's "
                                     "layout) cut into max_length windows, every token labelled")
    # method (unlearn only)
    method: str = setting("npo_rt", "the unlearning method (`npo methods` describes each)")
    beta: float = setting(0.1, "inverse temperature of NPO, SimNPO, DPO, KTO and TNPO (the NPO paper; TNPO's authors use 4)")
    gamma: float = setting(0.0, "SimNPO's margin, inside beta's scaling as in the SimNPO authors' code (0: none)")
    forget_weight: float = setting(1.0, "weight of the forget term in the loss")
    retain_weight: float = setting(1.0, "weight of the retain term (PDU: the initial lambda; RMU: alpha)")
    reference: str = setting("cached", "reference log-probs: cached once before training, or online (recomputed with "
                                       "a frozen copy every step; for checks)")
    # the original code's choices, which the NPO paper's numbers depend on (docs/tofu.md; configs/tofu/paper/)
    schedule: str = setting("epochs", "epochs: ceil(N/window) steps per pass; official: the NPO authors' (floor, lr 0 "
                                      "on the first step)")
    retain_pairing: str = setting("fresh", "fresh: a new retain window each step; fixed: forget i always meets retain "
                                           "(i + r_i) mod R, r_i drawn after manual_seed(i) (the NPO authors); "
                                           "cyclic: i mod R (MUSE)")
    token_mean: str = setting("window", "token means over the step's window, or per micro-batch then averaged (micro)")
    kl: str = setting("answer", "answer: KL over retain answer tokens; official: over every position padded to max_length")
    # objectives beyond NPO (docs/methods.md); each default names its source
    wga_alpha: float = setting(1.0, "WGA (Wang et al. 2025): exponent of the token weight p^alpha; open-unlearning's "
                                    "TOFU value (the authors' code defaults to 5)")
    satimp_beta1: float = setting(5.0, "SatImp (Yang et al. 2025): exponent of p (saturation); the authors' "
                                       "recommended value")
    satimp_beta2: float = setting(0.1, "SatImp: exponent of 1 - p (importance); the authors' recommended value "
                                       "(open-unlearning: 1)")
    wtnpo_alpha: float = setting(1.5, "WTNPO (Wang et al. 2025): exponent of the token weight p^alpha; the authors' "
                                      "code default")
    undial_gamma: float = setting(5.0, "UNDIAL (Dong et al. 2025): how far the target's reference logit is lowered; "
                                       "the authors' code default")
    ceu_ignore_first: int = setting(1, "CE-U (Yang 2025): answer tokens left out at the start of each answer, as in "
                                       "its training settings")
    pdu_eps: float = setting(0.3, "PDU (Entesari et al. 2025): bound on the retain NLL; the authors' TOFU runs. "
                                  "Initial lambda: retain_weight")
    pdu_dual_lr: float = setting(5.0, "PDU: step size of the dual ascent on lambda; the authors' TOFU runs")
    pdu_warmup_epochs: float = setting(5.0, "PDU: epochs before lambda moves; the authors' TOFU runs (5 of 10)")
    rmu_layer: int = setting(7, "RMU (Li et al. 2024, WMDP): decoder block (0-based) whose output is steered; "
                                "their layer_id")
    rmu_params: str = setting(r"layers\.(5|6|7)\.mlp\.down_proj\.", "RMU: regex of the parameter names trained; "
                                                                     "WMDP's layers 5-7 MLP down-projections")
    rmu_steering: float = setting(6.5, "RMU: steering coefficient c; WMDP's Zephyr-7B run (their CLI default: 20). "
                                       "Retain alpha: retain_weight")
    rmu_vector: str = setting("uniform", "RMU's control vector: uniform (U[0,1) normalised, as the WMDP code) or "
                                         "gaussian (a uniform direction)")
    rmu_positions: str = setting("labelled", "RMU: tokens averaged over: the labelled ones, or all (every padded "
                                             "position, as the WMDP code)")
    # optimisation
    epochs: int = setting(10, "passes over the forget set (finetune: the train set)")
    lr: float = setting(1e-5, "peak learning rate of AdamW, reached after the warm-up")
    batch_size: int = setting(8, "forget examples per step per process, each paired with a retain example")
    grad_accum: int = setting(1, "micro-batches accumulated per optimizer step (the window: batch_size x grad_accum "
                                 "x processes)")
    weight_decay: float = setting(0.01, "AdamW's decoupled weight decay")
    decay_norms_and_biases: bool = setting(True, "false: HF Trainer's groups (no decay on biases and norm weights)")
    warmup_epochs: float = setting(1.0, "epochs of linear warm-up to the peak lr")
    max_grad_norm: float | None = setting(None, "clip the gradient norm to this (null: no clipping)")
    seed: int = setting(0, "seed of the data order, refusal draws, dropout and every generator (0 to 2^32 - 1)")
    max_steps: int = setting(0, "optimizer steps to train, overriding epochs (0: epochs decide); RMU's WMDP run: 150")
    lr_schedule: str = setting("linear", "linear: decay to 0 after the warm-up (the NPO recipe); constant: keep the "
                                         "peak lr (RMU's WMDP code)")
    adam_eps: float = setting(1e-8, "AdamW's epsilon: torch's default (RMU's WMDP code used transformers' AdamW, 1e-6)")
    adamw_impl: str = setting("fused", "torch's AdamW kernel: fused (one pass, ~4x faster on a CPU), foreach or loop; "
                                       "the same update up to rounding")
    # LoRA (off when lora_r = 0)
    lora_r: int = setting(0, "LoRA rank (0: train every weight)")
    lora_alpha: int = setting(32, "LoRA scaling numerator (the update is scaled by lora_alpha / lora_r)")
    lora_dropout: float = setting(0.0, "dropout on the LoRA branch's input, in [0, 1)")
    lora_target_modules: list[str] | None = setting(None, "module names LoRA wraps (default: PEFT's choice for the "
                                                          "architecture)")
    load_in_4bit: bool = setting(False, "LoRA on an NF4-quantised frozen base (bitsandbytes, CUDA only; "
                                        "pip install 'npo[gpu4bit]')")
    save_merged: bool = setting(True, "merge the adapter into the saved model (false: save the adapter only)")
    # run
    out: str = setting("", "the run directory (config, metrics, checkpoint, model)")
    overwrite: bool = setting(False, "replace a run already in `out`")
    save_every_steps: int = setting(0, "checkpoint cadence for --resume, in optimizer steps (0: at each epoch end)")
    nonfinite: str = setting("stop", "a non-finite loss or gradient: stop the run, or skip the step (weights untouched)")
    max_skipped_steps: int = setting(10, "with nonfinite=skip, stop after more than this many skipped steps")
    logits: str = setting("labelled", "labelled: the LM head only where a label is; full: over every position (naive "
                                      "path, for checks)")
    # evaluation hook
    eval_every_epochs: int = setting(0, "evaluate on the benchmark every N epochs and before training (0: never)")
    eval_benchmark: str = setting("tofu", "the benchmark the hook evaluates")
    eval_data: str | None = setting(None, "the benchmark's data directory (default: `data`)")
    eval_forget_split: str | None = setting(None, "TOFU forget split evaluated, e.g. forget10 (default: `forget` when "
                                                  "it is a split name)")
    eval_retain_logs: str | None = setting(None, "eval logs of a retain-only model, the reference of Forget Quality")
    eval_protocol: str = setting("full", "full: every item; legacy300: the first 300 of each set and TOFU's "
                                         "evaluator caps")
    eval_max_new_tokens: int = setting(200, "new tokens generated per answer in evaluation")
    eval_batch_size: int = setting(EVAL_BATCH, "batch size of evaluation and of the reference log-prob pass (64: measured, "
                                         "BENCHMARKS.md)")
    eval_generation: str = setting("greedy", "greedy (TOFU's evaluator) or sampled after manual_seed(0) (the NPO "
                                             "authors' evaluator)")


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
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string; validate() rejects inf and nan
            try:
                value = float(value.strip())
            except ValueError:
                raise ConfigError(f"{where}'{name}' must be a number, got {value!r}") from None
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


def _is_text(hint) -> bool:
    """str or str | None: a value given as text stays that text (`forget=007`, not 7)."""
    return hint is str or (typing.get_origin(hint) in (typing.Union, types.UnionType)
                           and set(typing.get_args(hint)) == {str, type(None)})


def parse_overrides(pairs: list[str]) -> dict:
    """`key=value` strings; values are read as YAML scalars (`lr=3e-4`, `lora_r=8`, `x=null`), except
    that a text key keeps its text as given (`null` or `~` still clears an optional one)."""
    hints, out = _hints(), {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override '{pair}' must look like key=value")
        if key in hints and _is_text(hints[key]):
            out[key] = None if raw.strip() in ("null", "~") and hints[key] is not str else raw
            continue
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            raise ConfigError(f"override '{pair}': the value is not a valid YAML scalar or list") from None
        if isinstance(value, str) or value is None or isinstance(value, bool | int | float | list):
            out[key] = value
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


SEED_MAX = 2**32 - 1  # numpy's legacy seeding takes 32 bits
INT_MAX = 2**63 - 1  # torch's int64


def _numbers(cfg: TrainConfig) -> None:
    """Every number finite and in a range the libraries accept, before NaN or inf reach the schedule."""
    for name in _hints():
        value = getattr(cfg, name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"'{name}' must be a finite number, got {value}")
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT_MAX:
            raise ConfigError(f"'{name}' is out of range: {value} (at most {INT_MAX})")
    if not 0 <= cfg.seed <= SEED_MAX:
        raise ConfigError(f"'seed' must be between 0 and {SEED_MAX} (2^32 - 1), got {cfg.seed}")
    if cfg.lora_dropout >= 1:
        raise ConfigError(f"'lora_dropout' must be below 1, got {cfg.lora_dropout}")


def validate(cfg: TrainConfig) -> None:
    _numbers(cfg)
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
    """Written atomically: a crash leaves the previous file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    tmp.replace(path)


# ----------------------------------------------------------------------------- describing the keys


def type_name(hint) -> str:
    """A key's type as a user writes it: int, float, str, bool, list of str, 'or null' when optional."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return f"{type_name(inner[0])} or null"
    if typing.get_origin(hint) is list:
        return "list of str"
    return hint.__name__


def show(value) -> str:
    """A value as it would be written after key= (YAML scalars)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(value) if value else "[]"
    if value == "":
        return '""'
    return str(value)


def key_help() -> dict[str, tuple[str, object, str, tuple]]:
    """key -> (type, default, one line of help, choices) for every field of TrainConfig, in order."""
    hints, defaults = _hints(), TrainConfig()
    choices = {"method": _methods(), "eval_benchmark": _benchmarks(), **CHOICES}
    return {f.name: (type_name(hints[f.name]), getattr(defaults, f.name), f.metadata.get("help", ""),
                     tuple(c for c in choices.get(f.name, ()) if c is not None))
            for f in dataclasses.fields(TrainConfig)}
