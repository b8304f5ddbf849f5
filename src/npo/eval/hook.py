"""The trainer's evaluation hook: a benchmark evaluation every N epochs (and before training), a
summary per evaluation, and the run's curves (for TOFU, the paper's views: Forget Quality and Model
Utility against steps, Figure 6; Forget Quality against Model Utility, Figure 5)."""

from __future__ import annotations

import json
import logging

from npo.config import TrainConfig
from npo.errors import NpoError
from npo.eval import benchmarks
from npo.eval.scoring import Dist
from npo.progress import quiet

log = logging.getLogger("npo")


class EvalHook:
    def __init__(self, cfg: TrainConfig):
        self.benchmark = benchmarks.load(cfg.eval_benchmark)
        self.data = cfg.eval_data or cfg.data
        if not self.data:
            raise NpoError("the evaluation hook needs 'eval_data' (or 'data'): the benchmark's data directory")
        self.cfg = cfg

    def __call__(self, trainer, epoch: int) -> dict | None:
        from npo.plots import plot_run

        cfg = self.cfg
        model = trainer.acc.unwrap_model(trainer.scorer).model
        spec = benchmarks.EvalSpec(
            data=self.data, template=trainer.template, forget_split=cfg.eval_forget_split or cfg.forget,
            retain_logs=cfg.eval_retain_logs, protocol=cfg.eval_protocol, max_new_tokens=cfg.eval_max_new_tokens,
            batch_size=cfg.eval_batch_size, max_length=cfg.max_length, generation=cfg.eval_generation,
            identity={"model": cfg.model, "epoch": epoch, "step": trainer.step})
        with quiet():
            summary = self.benchmark.evaluate(model, trainer.tok, spec, trainer.run_dir / "eval" / f"epoch_{epoch:02d}",
                                              Dist.from_accelerator(trainer.acc))
        model.train()
        if summary is None:
            return None
        history_path = trainer.run_dir / "eval" / "history.jsonl"
        keys = ("epoch", "step", *(key for key, _ in self.benchmark.CURVES.values()))
        with history_path.open("a") as f:
            f.write(json.dumps({k: summary[k] for k in keys}) + "\n")
        history = [json.loads(x) for x in history_path.read_text().splitlines()]
        title = cfg.method if trainer.primary == "forget" else "finetune"
        plot_run(history, self.benchmark.CURVES, trainer.run_dir / "eval" / "curves.png", title=title)
        log.info("epoch %d: %s", epoch, self.benchmark.headline(summary))
        return summary
