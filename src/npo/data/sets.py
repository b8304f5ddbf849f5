"""The data sets a training run reads, tokenized: which ones a method needs, where they come from,
and the refusals paired with the forget questions.

Set names: `forget` (the examples to unlearn), `idk` (a refusal for each forget question, same
indices), `retain` (examples to keep), `train` (what fine-tuning learns).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from npo.config import TrainConfig
from npo.data.batches import Tokenized, tokenize_qa
from npo.data.qa import QARecord, load_lines, load_qa
from npo.errors import DataError, NpoError

log = logging.getLogger("npo")


def load_set(cfg: TrainConfig, spec: str) -> tuple[list[QARecord], str]:
    """A set given as a file path, `hf:` name, or split name inside `cfg.data`."""
    if spec.startswith("hf:") or Path(spec).exists():
        return load_qa(spec), spec
    if cfg.data:
        return load_qa(cfg.data, spec), f"{cfg.data}/{spec}"
    raise DataError(spec, "no such file (set 'data' to a TOFU-layout directory to use split names)")


def tokenize_set(tok, template: str, records: list[QARecord], source: str, max_length: int,
                 answers: list[str] | None = None) -> list[Tokenized]:
    out = []
    for i, rec in enumerate(records):
        answer = rec.answer if answers is None else answers[i]
        out.append(tokenize_qa(tok, template, rec.question, answer, max_length, where=f"{source}, row {i + 1}"))
    cut = sum(e.truncated for e in out)
    if cut:
        log.info("%s: %d of %d answers truncated to max_length %d", source, cut, len(out), max_length)
    return out


def first_draw(index: int, high: int) -> int:
    """`torch.randint(0, high)` right after `torch.manual_seed(index)`: how the NPO authors' data module
    pairs forget example `index` with its refusal and its retain partner."""
    return int(torch.randint(0, high, (1,), generator=torch.Generator().manual_seed(index)))


def fixed_partners(n_forget: int, n_retain: int) -> list[int]:
    """The retain example each forget example meets in every step (`retain_pairing=fixed`):
    (i + first_draw(i, R)) mod R, as in the NPO authors' TextForgetDatasetQA."""
    return [(i + first_draw(i, n_retain)) % n_retain for i in range(n_forget)]


def idk_answers(cfg: TrainConfig, n: int, seed: int) -> list[str]:
    """One refusal per forget example, drawn once (its reference log-prob is cached per example, so
    the pairing stays fixed): by a seeded generator, or with `retain_pairing=fixed` as the NPO
    authors' data module draws it (first_draw(i, pool size))."""
    path = cfg.idk or (str(Path(cfg.data) / "idontknow.jsonl") if cfg.data else None)
    if not path:
        raise NpoError("this method needs 'I don't know' answers: set 'idk' to a file with one per line")
    pool = load_lines(path)
    if cfg.retain_pairing == "fixed":
        return [pool[first_draw(i, len(pool))] for i in range(n)]
    g = torch.Generator().manual_seed(seed + 7)
    return [pool[i] for i in torch.randint(len(pool), (n,), generator=g).tolist()]


def load_sets(cfg: TrainConfig, method, tok, template: str) -> dict[str, list[Tokenized]]:
    """Every set `method` reads, tokenized; a missing or invalid set fails here, before any model loads."""
    if cfg.data_format == "text":  # raw-text corpora cut into windows (MUSE)
        from npo.data.text import load_text_sets

        return load_text_sets(cfg, method, tok)
    names = method.sets
    sets: dict[str, list[Tokenized]] = {}
    if "train" in names:
        if not cfg.train:
            raise NpoError("finetune needs 'train': one or more QA sets")
        sets["train"] = []
        for spec in cfg.train:
            records, src = load_set(cfg, spec)
            sets["train"] += tokenize_set(tok, template, records, src, cfg.max_length)
        return sets
    if not cfg.forget:
        raise NpoError("unlearn needs 'forget': a QA set to forget")
    records, src = load_set(cfg, cfg.forget)
    sets["forget"] = tokenize_set(tok, template, records, src, cfg.max_length)
    if "retain" in names:
        if not cfg.retain:
            raise NpoError(f"method '{cfg.method}' needs 'retain': a QA set to keep")
        r_records, r_src = load_set(cfg, cfg.retain)
        sets["retain"] = tokenize_set(tok, template, r_records, r_src, cfg.max_length)
    if "idk" in names:
        answers = idk_answers(cfg, len(records), cfg.seed)
        sets["idk"] = tokenize_set(tok, template, records, src + " (idk)", cfg.max_length, answers=answers)
    return sets
