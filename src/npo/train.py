"""The training loop of `npo unlearn` and `npo finetune`, readable top to bottom.

Each optimizer step draws one *window* of forget examples (the effective batch: batch_size x
grad_accum x processes) and a fresh window of retain examples from seeded, length-grouped streams.
Every process draws the same windows and takes its own micro-batches of them, so N processes with
batch B compute the same step as one process with batch N x B. Each micro-batch's loss is scaled
by its share of the window (examples for per-example means, tokens for token means), which makes
gradient accumulation and data parallelism exact.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import time
from pathlib import Path

import torch
from accelerate.utils import DistributedType

from npo.checkpoint import DONE_MARKER, find_checkpoint, load_checkpoint, prepare_run_dir, save_checkpoint
from npo.config import TrainConfig, save
from npo.data.batches import BatchStream, ShuffledStream, Tokenized
from npo.data.sets import fixed_partners, load_sets
from npo.data.templates import default_template
from npo.errors import NpoError
from npo.logprobs import Scorer
from npo.methods import CACHED, Method
from npo.micro import Micro
from npo.modeling import (
    add_lora,
    choose_dtype,
    load_model,
    load_tokenizer,
    match_vocab,
    require_4bit,
    save_model,
)
from npo.reference import FrozenParams, OnlineReference, reference_logprobs, reference_token_logprobs
from npo.runtime import (
    env_info,
    make_accelerator,
    progress,
    rng_state,
    seed_everything,
    set_rng_state,
    setup_logging,
    write_json,
)

log = logging.getLogger("npo")


def split_window(window: list[int], parts: int) -> list[list[int]]:
    """Contiguous, near-equal micro-batches (the window is sorted by length, so each is compact)."""
    size, extra = divmod(len(window), parts)
    out, start = [], 0
    for k in range(parts):
        end = start + size + (k < extra)
        out.append(window[start:end])
        start = end
    return out


# ----------------------------------------------------------------------------- state


def param_groups(model, weight_decay: float, decay_all: bool) -> list[dict]:
    """AdamW's parameter groups: weight decay on every trainable parameter, or, as transformers'
    Trainer groups them (the NPO authors' runs), none on biases and normalisation weights."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if decay_all:
        return [{"params": [p for _, p in params], "weight_decay": weight_decay}]
    norm = {f"{m}.{n}" if m else n for m, mod in model.named_modules()
            if isinstance(mod, torch.nn.LayerNorm) or type(mod).__name__.endswith("Norm")
            for n, _ in mod.named_parameters(recurse=False)}
    skip = {n for n, _ in params if n in norm or "bias" in n}
    return [{"params": [p for n, p in params if n not in skip], "weight_decay": weight_decay},
            {"params": [p for n, p in params if n in skip], "weight_decay": 0.0}]


def adamw(groups: list[dict], lr: float, eps: float, impl: str) -> torch.optim.AdamW:
    """torch's AdamW with the kernel `impl` names. fused updates every tensor in one pass without
    temporaries (on a CPU ~4x faster than the per-tensor loop, a third of a small model's step, and
    less heap churn); it rounds differently in the last bit of some updates (~1e-9 absolute after 5
    steps at lr 1e-3). Where the device has no fused kernel, foreach."""
    kwargs = {"fused": {"fused": True}, "foreach": {"foreach": True}, "loop": {"foreach": False}}[impl]
    try:
        return torch.optim.AdamW(groups, lr=lr, eps=eps, **kwargs)
    except RuntimeError:
        if impl != "fused":
            raise
        log.info("no fused AdamW for these parameters: foreach")
        return torch.optim.AdamW(groups, lr=lr, eps=eps, foreach=True)


def linear_schedule(warmup: int, total: int, decay: bool = True):
    """Linear warm-up to the peak lr over `warmup` steps, then linear decay to 0 at `total`
    (`decay=False`: constant after the warm-up)."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup)) if decay else 1.0
    return factor


def hf_linear_schedule(warmup: int, total: int, decay: bool = True):
    """transformers' get_linear_schedule_with_warmup, as the NPO authors ran it: the first optimizer
    step has lr 0 (AdamW's moments still update), the last lr/(total - warmup)."""
    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup)) if decay else 1.0
    return factor


def schedule(kind: str, n: int, window: int, epochs: int, warmup_epochs: float, max_steps: int = 0,
             decay: bool = True):
    """(steps per epoch, total steps, warm-up steps, lr factor per step).

    epochs: every pass over the n examples is ceil(n / window) steps (the last window shorter);
    official (the NPO authors' forget.py): floor(n / window) steps per epoch, floor(epochs n / window)
    in total, windows running on across passes, warm-up int(warmup_epochs x steps per epoch) of HF's
    linear schedule. On TOFU forget01 at window 32 over 10 epochs: 20 steps against 12.
    `max_steps` replaces the total when set; `decay=False` keeps the peak lr after the warm-up.
    """
    if kind == "official":
        per_epoch, total = n // window, max_steps or epochs * n // window
        if per_epoch == 0:
            raise NpoError(f"schedule=official: the {n} examples are fewer than one window of {window} "
                           "(batch_size x grad_accum x processes), so no step would run")
        warmup = int(warmup_epochs * per_epoch)
        return per_epoch, total, warmup, hf_linear_schedule(warmup, total, decay)
    per_epoch = math.ceil(n / window)
    total = max_steps or epochs * per_epoch
    warmup = round(warmup_epochs * per_epoch)
    return per_epoch, total, warmup, linear_schedule(warmup, total, decay)


def train_only(model, pattern: str, key: str) -> None:
    """Train only the parameters whose names match `pattern` (a method's choice, e.g. RMU's)."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    rx = re.compile(pattern)
    for name, p in model.named_parameters():
        p.requires_grad_(p.requires_grad and rx.search(name) is not None)
    if not any(p.requires_grad for p in model.parameters()):
        raise NpoError(f"'{key}' ({pattern!r}) matches none of the {len(names)} trainable parameters "
                       f"(their names look like '{names[0] if names else '?'}')")


class _Terms:
    """Backpropagates each loss term of a micro-batch as soon as it is computed, so the forget
    term's graph (activations, logits) is freed before the retain term's forward: the peak holds
    one term's graph, not two. Data-parallel gradients are reduced only in the backward of the
    window's last term (DDP decides that at forward time, hence one context per term). DeepSpeed
    counts backward calls as micro-batches, so there the terms are summed and backpropagated once."""

    def __init__(self, trainer: Trainer, last: bool, n_terms: int):
        self.t, self.last, self.left = trainer, last, n_terms
        self.split = trainer.acc.distributed_type != DistributedType.DEEPSPEED
        self.total, self.pending, self.finite = None, None, True

    @contextlib.contextmanager
    def context(self):
        """Around one term's forward (and, when split, its backward)."""
        t, self.left = self.t, self.left - 1
        sync = self.last and (self.left == 0 or not self.split)
        no_sync = t.acc.no_sync(t.scorer) if not sync and t.world > 1 else contextlib.nullcontext()
        with t.acc.autocast(), no_sync:
            yield

    def add(self, term: torch.Tensor) -> None:
        self.finite = self.finite and bool(torch.isfinite(term))
        self.total = term.detach() if self.total is None else self.total + term.detach()
        # DDP averages gradients over processes; the window shares already sum to one
        if self.split:
            self.t.acc.backward(term * self.t.world)
        else:
            self.pending = term if self.pending is None else self.pending + term

    def finish(self) -> torch.Tensor:
        if self.pending is not None:
            self.t.acc.backward(self.pending * self.t.world)
        return self.total


class Trainer:
    """Construction sets up everything in call order (devices, data, run directory, model, reference,
    optimizer, streams; a resumed run's checkpoint last); `run()` trains to the end."""

    def __init__(self, cfg: TrainConfig, method: Method, resume: bool = False, eval_hook=None):
        setup_logging()
        self.cfg, self.method, self.eval_hook = cfg, method, eval_hook
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
        if cfg.load_in_4bit:
            require_4bit()
        self.dtype, autocast, reason = choose_dtype(cfg.dtype, device_type, trains_all_weights=not cfg.lora_r)
        self.acc = make_accelerator(autocast)
        self.main, self.world, self.rank = self.acc.is_main_process, self.acc.num_processes, self.acc.process_index
        seed_everything(cfg.seed)
        self.env = {**env_info(cfg.seed, self.acc.device, self.dtype, reason, self.world), "autocast": autocast}
        # bad data fails before anything is written
        self.tok = load_tokenizer(cfg.tokenizer or cfg.model, cfg.gguf_file, cfg.trust_remote_code)
        self.template = cfg.template or default_template(self.tok)
        self.sets = load_sets(cfg, method, self.tok, self.template)
        self.run_dir = prepare_run_dir(cfg.out, cfg.overwrite, resume) if self.main else Path(cfg.out)
        self.acc.wait_for_everyone()
        if self.main:
            log.info("dtype %s (%s)", self.env["dtype"], reason)
        self.model = self._load_model()
        self.scorer = Scorer(self.model)
        needs = method.needs
        cached = needs & CACHED
        online = "online_ref" in needs or (cfg.reference == "online" and cached)
        self.online = (OnlineReference(self.model, lora=bool(cfg.lora_r), full_logits=cfg.logits == "full")
                       if online else None)
        self.frozen = None
        if "frozen_hidden" in needs:  # sharding engines own parameter storage: keep a frozen copy there
            sharded = self.acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
            self.frozen = FrozenParams(self.model, lora=bool(cfg.lora_r), copy_model=sharded)
        # state a method keeps across steps (in checkpoints), and values its terms prepare per step
        self.method_state = {k: v for t in method.terms if t.init_state for k, v in t.init_state(cfg, self.model).items()}
        self.prepared: dict = {}
        checkpoint = find_checkpoint(self.run_dir) if resume else None
        self.cache = self._reference_cache(cached) if cfg.reference == "cached" and checkpoint is None else {}
        self.optimizer = adamw(param_groups(self.model, cfg.weight_decay, cfg.decay_norms_and_biases), cfg.lr,
                               cfg.adam_eps, cfg.adamw_impl)
        self.window = cfg.batch_size * cfg.grad_accum * self.world
        self.primary = "train" if "train" in self.sets else "forget"  # the set whose passes are epochs
        self.steps_per_epoch, self.total_steps, self.warmup_steps, factor = schedule(
            cfg.schedule, len(self.sets[self.primary]), self.window, cfg.epochs, cfg.warmup_epochs,
            cfg.max_steps, decay=cfg.lr_schedule == "linear")
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)
        self.scorer, self.optimizer = self.acc.prepare(self.scorer, self.optimizer)
        lengths = [len(e.input_ids) for e in self.sets[self.primary]]
        self.streams = {self.primary: ShuffledStream(len(lengths), self.window, cfg.seed) if cfg.schedule == "official"
                        else BatchStream(lengths, self.window, cfg.seed)}
        self.partners = None
        if "retain" in self.sets and cfg.retain_pairing != "fresh":
            n_forget, n_retain = len(self.sets["forget"]), len(self.sets["retain"])
            self.partners = (fixed_partners(n_forget, n_retain) if cfg.retain_pairing == "fixed"
                             else [i % n_retain for i in range(n_forget)])
        elif "retain" in self.sets:
            self.streams["retain"] = BatchStream([len(e.input_ids) for e in self.sets["retain"]], self.window,
                                                 cfg.seed + 1)
        self.step, self.skipped = 0, 0
        self.resumed = resume
        if resume:
            self.restore(checkpoint)

    def _load_model(self):
        cfg = self.cfg
        model = load_model(cfg.model, self.dtype, cfg.gguf_file, cfg.trust_remote_code, cfg.allow_pickle,
                           load_in_4bit=cfg.load_in_4bit, device_index=self.acc.device.index)
        match_vocab(model, self.tok)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        if cfg.lora_r:
            if cfg.gradient_checkpointing:
                model.enable_input_require_grads()
            model = add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules)
        if self.method.trains:
            train_only(model, getattr(cfg, self.method.trains), self.method.trains)
        if not cfg.load_in_4bit:  # a 4-bit base is placed by from_pretrained and cannot be moved
            model = model.to(self.acc.device)
        model.train()
        return model

    def _reference_cache(self, needed: frozenset[str]) -> dict[str, torch.Tensor]:
        """The reference's summed log-probs of the forget (and refusal) answers, one no-grad pass;
        per-token ones as one NaN-padded row per example."""
        cache: dict[str, torch.Tensor] = {}
        if not needed:
            return cache
        t0 = time.time()
        with self.acc.autocast():
            for need, name in (("ref_forget", "forget"), ("ref_idk", "idk")):
                if need in needed:
                    cache[name] = self._reference(self.sets[name], self.cfg.logits == "full")
            if "ref_forget_tokens" in needed:
                cache["forget_tokens"] = self._reference_tokens(self.sets["forget"])
        if self.main:
            log.info("reference log-probs cached for %d examples in %.1fs", len(self.sets["forget"]), time.time() - t0)
        return cache

    def _reference(self, examples: list[Tokenized], full: bool) -> torch.Tensor:
        """Each process scores its shard; the shards are gathered into one per-example tensor."""
        shard = list(range(self.rank, len(examples), self.world))
        local = reference_logprobs(self.model, [examples[i] for i in shard], self.tok.pad_token_id,
                                   self.cfg.eval_batch_size, self.acc.device, full)
        if self.world == 1:
            return local
        from accelerate.utils import gather_object

        pairs = gather_object(list(zip(shard, local.tolist(), strict=True)))
        out = torch.empty(len(examples))
        for i, v in pairs:
            out[i] = v
        return out

    def _reference_tokens(self, examples: list[Tokenized]) -> torch.Tensor:
        shard = list(range(self.rank, len(examples), self.world))
        local = reference_token_logprobs(self.model, [examples[i] for i in shard], self.tok.pad_token_id,
                                         self.cfg.eval_batch_size, self.acc.device)
        pairs = list(zip(shard, [v.tolist() for v in local], strict=True))
        if self.world > 1:
            from accelerate.utils import gather_object

            pairs = gather_object(pairs)
        out = torch.full((len(examples), max(1, max(e.n_labels for e in examples))), float("nan"))
        for i, values in pairs:
            out[i, :len(values)] = torch.tensor(values)
        return out

    # -- the step

    def micro_backward(self, idx: dict[str, list[int]], window: dict[str, list[int]], last: bool
                       ) -> tuple[torch.Tensor, dict, bool]:
        """Backpropagate one micro-batch's terms, each scaled by its share of the window; return the
        loss, its logged parts and whether every term was finite. `last`: the window's last
        micro-batch of this process (where data-parallel gradients are reduced)."""
        parts: dict[str, torch.Tensor] = {}
        micro = Micro(self, idx, window, parts)
        terms = _Terms(self, last, n_terms=len(self.method.terms))
        for term in self.method.terms:
            with terms.context():
                loss = term.fn(micro)
                parts[term.log_key] = loss.detach()
                weight = (self.method_state[term.coef] if term.coef
                          else getattr(self.cfg, term.weight_key) if term.weight_key else 1.0)
                terms.add(weight * loss if term.weight_key else loss)
        return terms.finish(), parts, terms.finite

    def _windows(self) -> dict[str, list[int]]:
        """This step's examples of every set: refusals follow the forget questions."""
        window = {name: stream.next() for name, stream in self.streams.items()}
        if "idk" in self.sets:
            window["idk"] = window["forget"]
        if self.partners is not None:
            window["retain"] = [self.partners[i] for i in window["forget"]]
        return window

    def train_step(self) -> dict:
        cfg = self.cfg
        window = self._windows()
        n_parts = self.world * cfg.grad_accum
        split = {name: split_window(w, n_parts) for name, w in window.items()}
        mine = range(self.rank * cfg.grad_accum, (self.rank + 1) * cfg.grad_accum)
        self.prepared = self._prepare(window, split, mine)
        logged: dict[str, torch.Tensor] = {}
        finite = True
        for k, j in enumerate(mine):
            if not split[self.primary][j]:
                continue
            idx = {name: parts[j] for name, parts in split.items()}
            loss, parts, ok = self.micro_backward(idx, window, last=k == cfg.grad_accum - 1)
            finite = finite and ok
            for name, v in {"loss": loss, **parts}.items():
                logged[name] = logged.get(name, 0.0) + v
        params = [p for p in self.model.parameters() if p.requires_grad]
        total_norm = getattr(torch.nn.utils, "get_total_norm", None)  # torch >= 2.6
        if cfg.max_grad_norm or total_norm is None or self.acc.distributed_type != "NO" \
                or self.acc.scaler is not None:
            grad_norm = self.acc.clip_grad_norm_(params, cfg.max_grad_norm or float("inf"))
        else:  # the norm alone (it is logged): clipping at inf would multiply every gradient by 1
            grad_norm = total_norm([p.grad for p in params if p.grad is not None])
        # DeepSpeed clips inside its engine and reports no norm
        grad_norm = float(grad_norm) if grad_norm is not None else None
        reduced = {k: float(self.acc.reduce(torch.as_tensor(v, device=self.acc.device).float(), "sum"))
                   for k, v in sorted(logged.items())}
        if not (finite and (grad_norm is None or math.isfinite(grad_norm)) and all(math.isfinite(v) for v in reduced.values())):
            self.optimizer.zero_grad(set_to_none=True)
            self._nonfinite(reduced, grad_norm)
            self.step += 1
            return {"step": self.step, "skipped": True, **reduced, "grad_norm": grad_norm}
        lr = self.scheduler.get_last_lr()[0]  # the rate this step applies
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        for term in self.method.terms:
            if term.after_step:  # once per optimizer step, identically on every process
                term.after_step(self, reduced)
        self.step += 1
        return {"step": self.step, "epoch": self.step / self.steps_per_epoch, **reduced,
                "lr": lr, "grad_norm": grad_norm}

    def _prepare(self, window: dict, split: dict, mine: range) -> dict:
        """What a term needs of the whole window before its micro-batches (KTO's KL baseline), at
        the current weights and without gradients; every process takes part."""
        hooks = [t.before_step for t in self.method.terms if t.before_step]
        if not hooks:
            return {}
        micros = [Micro(self, {name: parts[j] for name, parts in split.items()}, window, {})
                  for j in mine if split[self.primary][j]]
        out: dict = {}
        with torch.no_grad(), self.acc.autocast():
            for hook in hooks:
                out.update(hook(self, micros, window))
        return out

    def _nonfinite(self, values: dict, grad_norm: float | None) -> None:
        shown = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
        msg = f"non-finite loss or gradient at step {self.step + 1}: {shown}, grad_norm={grad_norm}"
        self.skipped += 1
        if self.cfg.nonfinite == "stop":
            raise NpoError(msg + "; weights untouched, the last checkpoint is kept "
                           "(nonfinite=skip skips such steps)")
        if self.skipped > self.cfg.max_skipped_steps:
            raise NpoError(msg + f"; {self.skipped} steps skipped, more than max_skipped_steps")
        log.warning("%s; step skipped (%d so far)", msg, self.skipped)

    # -- checkpoints

    def _state(self) -> dict:
        method = {k: v.tolist() if isinstance(v, torch.Tensor) else v for k, v in self.method_state.items()}
        return {"step": self.step, "skipped": self.skipped, "method": method,
                "streams": {name: s.state() for name, s in self.streams.items()}}

    def save_checkpoint(self) -> None:
        self.acc.wait_for_everyone()
        if self.main:
            save_checkpoint(self.run_dir, self.acc.unwrap_model(self.scorer).model, self.optimizer,
                            self.scheduler, self._state(), rng_state(), self.cache)
        self.acc.wait_for_everyone()

    def restore(self, path: Path | None) -> None:
        if path is None:
            log.info("no checkpoint in %s: starting from the beginning", self.run_dir)
            if self.cfg.reference == "cached":
                self.cache = self._reference_cache(self.method.needs & CACHED)
            return
        model = self.acc.unwrap_model(self.scorer).model
        state, rng, cache = load_checkpoint(path, model, self.optimizer, self.scheduler)
        self.step, self.skipped = state["step"], state["skipped"]
        for name, stream in self.streams.items():
            stream.load_state(state["streams"][name])
        for key, value in state.get("method", {}).items():  # a float, or a tensor saved as a list
            old = self.method_state[key]
            self.method_state[key] = torch.tensor(value, dtype=old.dtype) if isinstance(old, torch.Tensor) else value
        self.cache = cache or {}
        set_rng_state(rng)
        log.info("resumed from %s at step %d of %d", path, self.step, self.total_steps)

    # -- run

    def run(self) -> Path:
        cfg = self.cfg
        if not self.resumed and self.main:
            save(cfg, self.run_dir / "config.yaml")
            write_json(self.run_dir / "env.json", self.env)
        metrics_path = self.run_dir / "metrics.jsonl"
        bar = progress(self.total_steps, "steps", self.main, initial=self.step)
        if self.eval_hook and self.step == 0:
            self.eval_hook(self, epoch=0)
        while self.step < self.total_steps:
            record = self.train_step()
            if self.main:
                with metrics_path.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                bar.update(1)
                bar.set_postfix(loss=f"{record.get('loss', float('nan')):.4g}")
            at_epoch_end = self.step % self.steps_per_epoch == 0
            epoch = self.step // self.steps_per_epoch
            if self.eval_hook and at_epoch_end and cfg.eval_every_epochs and epoch % cfg.eval_every_epochs == 0:
                self.eval_hook(self, epoch=epoch)
            every = cfg.save_every_steps
            due = (every and self.step % every == 0) or (not every and at_epoch_end)
            if due and self.step < self.total_steps:
                self.save_checkpoint()
        bar.close()
        self.acc.wait_for_everyone()
        if self.main:
            model = self.acc.unwrap_model(self.scorer).model
            save_model(model, self.tok, self.run_dir / "model", merge=cfg.save_merged)
            write_json(self.run_dir / DONE_MARKER, {"steps": self.step, "skipped": self.skipped,
                                                    "model": str(self.run_dir / "model")})
        self.acc.wait_for_everyone()
        return self.run_dir
