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
import time
from pathlib import Path

import torch
from accelerate.utils import DistributedType

from npo import resume as resuming
from npo.checkpoint import find_checkpoint, load_checkpoint, prepare_run_dir, save_checkpoint
from npo.config import TrainConfig, save
from npo.data.batches import BatchStream, ShuffledStream, Tokenized
from npo.data.sets import fixed_partners, load_sets
from npo.data.templates import default_template
from npo.errors import NpoError
from npo.logprobs import Scorer
from npo.methods import CACHED, Method
from npo.micro import Micro
from npo.modeling import add_lora, choose_dtype, load_model, load_tokenizer, match_vocab, require_4bit
from npo.optim import adamw, param_groups, schedule, train_only
from npo.progress import progress
from npo.reference import FrozenParams, OnlineReference, reference_logprobs, reference_token_logprobs
from npo.runguard import RunGuard
from npo.runtime import (
    StopSignals,
    env_info,
    make_accelerator,
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


class Trainer(RunGuard):
    """Construction sets up everything in call order (devices, data, run directory, model, reference,
    optimizer, streams; a resumed run's checkpoint last); `run()` trains to the end. The run directory
    is locked from its creation until `close()`; a construction that fails removes a directory it
    created, so a failed model load leaves no empty --out behind."""

    def __init__(self, cfg: TrainConfig, method: Method, resume: bool = False, eval_hook=None):
        self.lock, self.created, self.main = None, False, True
        try:
            self._setup(cfg, method, resume, eval_hook)
        except BaseException:
            self.close(failed=True)
            raise

    def _setup(self, cfg: TrainConfig, method: Method, resume: bool, eval_hook) -> None:
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
        # a resume refuses changed settings (every process checks, so none waits for a failed one)
        self.changed = resuming.changes(cfg.out, cfg) if resume else {}
        self.run_dir = Path(cfg.out)
        if self.main:
            self.run_dir, self.lock, self.created = prepare_run_dir(cfg.out, cfg.overwrite, resume)
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
        self.saved_step: int | None = None  # the step of the checkpoint on disk
        self.saving = False
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
            self.saving = True
            with self._writing(f"the checkpoint of step {self.step}"):
                save_checkpoint(self.run_dir, self.acc.unwrap_model(self.scorer).model, self.optimizer,
                                self.scheduler, self._state(), rng_state(), self.cache)
            self.saving = False
        self.saved_step = self.step
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
        self.saved_step = self.step
        set_rng_state(rng)
        log.info("resumed from %s at step %d of %d", path, self.step, self.total_steps)

    # -- run

    def run(self) -> Path:
        """Train to the end; the run directory's lock is released however the run ends."""
        try:
            return self._run()
        finally:
            self.close()

    def _run(self) -> Path:
        cfg = self.cfg
        metrics_path = self.run_dir / "metrics.jsonl"
        if self.main:
            with self._writing("the run's records"):
                if self.resumed:  # the steps after the checkpoint run again: drop their records
                    resuming.record(self.run_dir, cfg, self.changed, self.step)
                    resuming.keep_steps(metrics_path, self.step)
                    resuming.keep_steps(self.run_dir / "eval" / "history.jsonl", self.step if self.step else -1)
                else:
                    save(cfg, self.run_dir / "config.yaml")
                    write_json(self.run_dir / "env.json", self.env)
        with StopSignals(self._stop_now, lambda: self.step) as self.signals:
            bar = progress(self.total_steps, "steps", self.main, initial=self.step, every=self.steps_per_epoch,
                           unit="epoch")
            if self.eval_hook and self.step == 0:
                self.eval_hook(self, epoch=0)
            while self.step < self.total_steps:
                self._stop_if_signalled()
                record = self.train_step()
                if self.main:
                    with self._writing("metrics.jsonl"), metrics_path.open("a") as f:
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
                self._save_final()
            self.acc.wait_for_everyone()
        return self.run_dir
