"""Raw-text corpora (MUSE's forget and retain sets) cut into training windows, every token labelled.

The windows are `Tokenized` examples with `n_prompt = 1`: the first token of a window is context
only (nothing predicts it), every later token is a target. So the trainer, the reference cache and
every log-prob term run on them unchanged, and a window's log-prob is the summed log-prob of its
tokens, which is what NPO on raw text uses.

How MUSE's baselines cut text (muse_bench `baselines/dataset.py`), followed here:
- a `.txt` corpus is tokenised whole, without special tokens, and cut into non-overlapping chunks
  of `max_length - 1` tokens, each prefixed with BOS. The last, shorter chunk is filled by
  wrapping around to the first window (so it holds a second BOS in its middle). No EOS anywhere;
- a `.json` list (strings, or objects with `text`), or a `.jsonl` file of them, is one sequence per item, tokenised with BOS and
  truncated to `max_length`. MUSE right-pads each item with EOS and labels the padding; here
  batches are padded dynamically and padding is never labelled.
A tokenizer without BOS gets chunks of `max_length` tokens with no prefix. A single-window corpus
is kept as it is (MUSE would append a copy of itself).

Names resolve like MUSE's files: `forget` is `DATA/forget.txt`, `DATA/forget.json` or
`DATA/raw/forget.{txt,json}` (`.txt` first, as MUSE's unlearning scripts use); `sust/forget_2` is
`DATA/sust/forget_2.txt`. With `data: hf:NAME`, `forget` is config `raw`, split `forget` of the hub
dataset, and `sust/forget_2` config `sust`, split `forget_2`; hub rows are joined with a blank line,
which is how MUSE writes its `.txt` files.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from npo.data.batches import Tokenized
from npo.errors import DataError, NpoError

log = logging.getLogger("npo")


def text_items(rows, source: str) -> list[str]:
    """A JSON list of texts: strings, or objects with a `text` string (MUSE writes the former, the
    hub's rows are the latter)."""
    if not isinstance(rows, list):
        raise DataError(source, f"expected a JSON list of texts, got {type(rows).__name__}")
    if not rows:
        raise DataError(source, "empty corpus: the list holds no texts")
    out = []
    for i, row in enumerate(rows, start=1):
        where, field = f"{source}, item {i}", None
        if isinstance(row, dict):
            if "text" not in row:
                raise DataError(where, "missing required field", field="text")
            row, field = row["text"], "text"
        if not isinstance(row, str):
            raise DataError(where, f"expected a string, got {type(row).__name__}", field=field)
        if not row.strip():
            raise DataError(where, "empty text", field=field)
        out.append(row)
    return out


def read_utf8(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(str(path), "file not found") from None
    except OSError as err:
        raise DataError(str(path), f"cannot read: {err.strerror or err}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(str(path), f"not UTF-8 text: byte 0x{data[err.start]:02x} at offset {err.start}") from None


def read_json(path: Path):
    text = read_utf8(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(str(path), f"malformed JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None


def read_corpus(path: str | Path) -> str | list[str]:
    """A `.txt` corpus as one string, a `.json` corpus as its list of texts."""
    path = Path(path)
    if path.suffix == ".txt":
        text = read_utf8(path)
        if not text.strip():
            raise DataError(str(path), "empty corpus: the file holds no text")
        return text
    if path.suffix == ".json":
        return text_items(read_json(path), str(path))
    if path.suffix == ".jsonl":  # one text per line (WMDP's forget corpora: objects with `text`)
        rows = []
        for lineno, line in enumerate(read_utf8(path).splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise DataError(str(path), f"malformed JSON-lines at line {lineno}: {err.msg}", row=lineno) from None
        return text_items(rows, str(path))
    raise DataError(str(path), "a raw-text corpus must be a .txt file, a .json list of texts or .jsonl lines")


def _hub_corpus(name: str, spec: str) -> tuple[str, str]:
    from npo.data.muse import hub_rows, hub_split

    config, split = hub_split(spec)
    source = f"hf:{name}:{config}:{split}"
    return "\n\n".join(text_items(hub_rows(name, config, split), source)), source


def resolve_corpus(data: str | None, spec: str) -> tuple[str | list[str], str]:
    """(corpus, where it came from) for a file path, `hf:NAME:CONFIG:SPLIT`, or a name in `data`."""
    if spec.startswith("hf:"):
        name, _, rest = spec[3:].partition(":")
        return _hub_corpus(name, rest.replace(":", "/"))
    if Path(spec).is_file():
        return read_corpus(spec), spec
    if data and data.startswith("hf:"):
        return _hub_corpus(data[3:], spec)
    if data:
        root = Path(data)
        candidates = [root / f"{spec}{ext}" for ext in (".txt", ".json")]
        candidates += [root / "raw" / f"{spec}{ext}" for ext in (".txt", ".json")]
        for path in candidates:
            if path.is_file():
                return read_corpus(path), str(path)
        raise DataError(str(root), f"no corpus '{spec}' (looked for {spec}.txt, {spec}.json and raw/{spec}.txt|json)")
    raise DataError(spec, "no such file (set 'data' to a MUSE-layout directory to use names such as 'forget')")


def corpus_windows(tok, text: str, max_length: int, source: str = "corpus") -> list[Tokenized]:
    """A whole corpus tokenised once and cut into windows of `max_length` tokens (see the module)."""
    bos = tok.bos_token_id
    width = max_length - 1 if bos is not None else max_length
    if width < 1:
        raise NpoError(f"max_length {max_length} leaves no room for text after BOS")
    ids = list(tok(text, add_special_tokens=False, verbose=False)["input_ids"])
    if len(ids) + (bos is not None) < 2:
        raise DataError(source, "the corpus is a single token: nothing to predict")
    prefix = [bos] if bos is not None else []
    windows = [prefix + ids[i:i + width] for i in range(0, len(ids), width)]
    if len(windows) > 1 and len(windows[-1]) < max_length:
        windows[-1] = (windows[-1] + windows[0])[:max_length]
    return [Tokenized(tuple(w), 1, False) for w in windows]


def item_windows(tok, texts: list[str], max_length: int, source: str = "corpus") -> list[Tokenized]:
    """One sequence per text, with BOS, truncated to `max_length`."""
    out = []
    for i, text in enumerate(texts, start=1):
        ids = list(tok(text, add_special_tokens=True, verbose=False)["input_ids"])
        if len(ids) < 2:
            raise DataError(f"{source}, item {i}", "a single token: nothing to predict", field="text")
        out.append(Tokenized(tuple(ids[:max_length]), 1, len(ids) > max_length))
    return out


def text_set(tok, data: str | None, spec: str, max_length: int) -> list[Tokenized]:
    corpus, source = resolve_corpus(data, spec)
    if isinstance(corpus, str):
        windows = corpus_windows(tok, corpus, max_length, source)
        log.info("%s: %d windows of %d tokens", source, len(windows), max_length)
        return windows
    windows = item_windows(tok, corpus, max_length, source)
    cut = sum(w.truncated for w in windows)
    log.info("%s: %d texts, one window each%s", source, len(windows),
             f" ({cut} truncated to {max_length} tokens)" if cut else "")
    return windows


def load_text_sets(cfg, method, tok) -> dict[str, list[Tokenized]]:
    """The sets a method reads (`forget`, `retain`, or fine-tuning's `train`) as raw-text windows."""
    names = method.sets
    if "idk" in names:
        raise NpoError(f"method '{cfg.method}' pairs a refusal with each forget question; raw text "
                       "(data_format: text) has no questions")
    if "train" in names:
        if not cfg.train:
            raise NpoError("finetune needs 'train': one or more corpora")
        return {"train": [w for spec in cfg.train for w in text_set(tok, cfg.data, spec, cfg.max_length)]}
    if not cfg.forget:
        raise NpoError("unlearn needs 'forget': a corpus to forget")
    sets = {"forget": text_set(tok, cfg.data, cfg.forget, cfg.max_length)}
    if "retain" in names:
        if not cfg.retain:
            raise NpoError(f"method '{cfg.method}' needs 'retain': a corpus to keep")
        sets["retain"] = text_set(tok, cfg.data, cfg.retain, cfg.max_length)
    return sets
