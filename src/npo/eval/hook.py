"""The trainer's evaluation hook: a TOFU evaluation every N epochs (and before training), a summary
per checkpoint, and the paper's views of the run (Forget Quality and Model Utility against steps,
Figure 6; Forget Quality against Model Utility, Figure 5)."""

from __future__ import annotations

import json
import logging

from npo.config import TrainConfig
from npo.errors import NpoError
from npo.eval.tofu import Dist

log = logging.getLogger("npo")


class EvalHook:
    def __init__(self, cfg: TrainConfig):
        self.data = cfg.eval_data or cfg.data
        self.split = cfg.eval_forget_split or cfg.forget
        if not self.data:
            raise NpoError("the evaluation hook needs 'eval_data' (or 'data'): a TOFU-layout directory")
        self.cfg = cfg

    def __call__(self, trainer, epoch: int) -> dict | None:
        from npo.eval.run import evaluate_model
        from npo.report import plot_run

        cfg, acc = self.cfg, trainer.acc
        model = acc.unwrap_model(trainer.scorer).model if hasattr(trainer, "scorer") else trainer.model
        dist = Dist.from_accelerator(acc)
        out = trainer.run_dir / "eval" / f"epoch_{epoch:02d}"
        summary = evaluate_model(
            model, trainer.tok, data=self.data, forget_split=self.split, template=trainer.template, out=out,
            protocol=cfg.eval_protocol, retain_logs=cfg.eval_retain_logs, max_new_tokens=cfg.eval_max_new_tokens,
            batch_size=cfg.eval_batch_size, max_length=cfg.max_length,
            identity={"model": cfg.model, "epoch": epoch, "step": trainer.step}, dist=dist)
        model.train()
        if summary is None:
            return None
        history_path = trainer.run_dir / "eval" / "history.jsonl"
        with history_path.open("a") as f:
            f.write(json.dumps({k: summary[k] for k in ("epoch", "step", "model_utility", "forget_quality")}) + "\n")
        history = [json.loads(x) for x in history_path.read_text().splitlines()]
        plot_run(history, trainer.run_dir / "eval" / "curves.png", title=f"{cfg.method if trainer.method else 'finetune'}")
        fq = summary["forget_quality"]
        log.info("epoch %d: Model Utility %.4f, Forget Quality %s", epoch, summary["model_utility"],
                 f"{fq:.4g}" if fq is not None else "n/a")
        return summary
