"""A deletion request: which items of which benchmark split are to be forgotten.

    {"id": "2024-07-01-ana-varga",          # any string naming the request
     "benchmark": "tofu",
     "data": "../testbed",                   # a TOFU-layout directory (relative to this file)
     "forget_split": "forget10",
     "items": "all",                         # or [1, 5, 7] (1-based rows of the split), or
                                             # [{"question": ..., "answer": ...}, ...]
     "items_file": "request_items.jsonl",    # instead of "items": QA records in a file
     "holdout": "holdout10",                 # optional: items no model was trained on
     "metadata": {"requested_by": "...", "received": "2024-07-01"}}   # optional, copied to the record

Each named item must be a record of the forget split (compared by normalised text, manifest.py);
anything else is refused with the item's position, before any model is loaded.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path

from npo.audit.manifest import file_sha256, item_sha256
from npo.data.qa import QARecord, load_file, resolve
from npo.errors import NpoError

KEYS = ("id", "benchmark", "data", "forget_split", "items", "items_file", "holdout", "metadata")
REQUIRED = ("id", "benchmark", "data", "forget_split")
BENCHMARKS = ("tofu",)  # what an audit can evaluate (TOFU's four eval sets)


@dataclass
class Request:
    id: str
    path: str
    sha256: str
    benchmark: str
    data: str
    forget_split: str
    source: str  # the forget split's file
    rows: list[int]  # 0-based rows of the forget split, in request order
    records: list[QARecord]  # with the perturbed fields of `<split>_perturbed`
    hashes: list[str]
    holdout: str | None = None
    metadata: dict = field(default_factory=dict)


def _read(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NpoError(f"request file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise NpoError(f"{path}: cannot read: {err}") from None
    except json.JSONDecodeError as err:
        raise NpoError(f"{path}: malformed JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    if not isinstance(obj, dict):
        raise NpoError(f"{path}: expected a JSON object with keys {', '.join(REQUIRED)}")
    for key in obj:
        if key not in KEYS:
            close = difflib.get_close_matches(key, KEYS, n=1)
            raise NpoError(f"{path}: unknown key '{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    for key in REQUIRED:
        if not isinstance(obj.get(key), str) or not obj[key].strip():
            raise NpoError(f"{path}: key '{key}' must be a non-empty string")
    if obj["benchmark"] not in BENCHMARKS:
        raise NpoError(f"{path}: benchmark '{obj['benchmark']}' cannot be audited (choose from {', '.join(BENCHMARKS)})")
    if "items" in obj and "items_file" in obj:
        raise NpoError(f"{path}: give 'items' or 'items_file', not both")
    if not isinstance(obj.get("metadata", {}), dict):
        raise NpoError(f"{path}: 'metadata' must be a JSON object")
    return obj


def _relative(base: Path, value: str) -> str:
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else base / p)


def _wanted(obj: dict, path: Path, base: Path, n_rows: int, by_hash: dict[str, int]) -> list[int]:
    """0-based rows of the forget split the request names."""
    if "items_file" in obj:
        src = _relative(base, obj["items_file"])
        named = [(f"{src}, row {i}", r.question, r.answer) for i, r in enumerate(load_file(src), start=1)]
    else:
        items = obj.get("items", "all")
        if items == "all":
            return list(range(n_rows))
        if not isinstance(items, list) or not items:
            raise NpoError(f"{path}: 'items' must be \"all\", or a non-empty list of rows or {{question, answer}} objects")
        named = []
        for i, item in enumerate(items):
            where = f"{path}: items[{i}]"
            if isinstance(item, int) and not isinstance(item, bool):
                if not 1 <= item <= n_rows:
                    raise NpoError(f"{where}: row {item} is not in the forget split (rows 1 to {n_rows})")
                named.append((where, None, item - 1))
            elif isinstance(item, dict) and isinstance(item.get("question"), str) and isinstance(item.get("answer"), str):
                named.append((where, item["question"], item["answer"]))
            else:
                raise NpoError(f"{where}: expected a 1-based row number or an object with 'question' and 'answer'")
    rows = []
    for where, question, answer in named:
        if question is None:
            row = answer
        else:
            row = by_hash.get(item_sha256(question, answer))
            if row is None:
                raise NpoError(f"{where}: the item (question '{question[:60]}') is not in the forget split")
        if row in rows:
            raise NpoError(f"{where}: row {row + 1} of the forget split is named twice")
        rows.append(row)
    return rows


def load_request(path: str | Path, holdout: str | None = None) -> Request:
    path = Path(path)
    obj = _read(path)
    base = path.resolve().parent
    data = _relative(base, obj["data"])
    if not Path(data).is_dir():
        raise NpoError(f"{path}: 'data' is not a directory: {data}")
    split = obj["forget_split"]
    source = resolve(data, split)
    records = load_file(source)
    hashes = [item_sha256(r.question, r.answer) for r in records]
    by_hash: dict[str, int] = {}
    for i, h in enumerate(hashes):
        by_hash.setdefault(h, i)
    rows = _wanted(obj, path, base, len(records), by_hash)
    perturbed_path = resolve(data, f"{split}_perturbed")
    perturbed = {item_sha256(r.question, r.answer): r for r in load_file(perturbed_path)}
    missing = [i for i in rows if hashes[i] not in perturbed]
    if missing:
        raise NpoError(f"{perturbed_path}: no record for row {missing[0] + 1} of {source} (TOFU takes the paraphrased "
                       "and perturbed answers from it)")
    return Request(id=obj["id"], path=str(path.resolve()), sha256=file_sha256(path), benchmark=obj["benchmark"],
                   data=data, forget_split=split, source=str(source), rows=rows,
                   records=[perturbed[hashes[i]] for i in rows], hashes=[hashes[i] for i in rows],
                   holdout=holdout or obj.get("holdout"), metadata=obj.get("metadata", {}))


def write_request(path: str | Path, *, id: str, data: str | Path, forget_split: str, items="all",
                  holdout: str | None = None, metadata: dict | None = None) -> Path:
    """Write a request file (data as an absolute path, so the file can move); returns its path."""
    obj = {"id": id, "benchmark": "tofu", "data": str(Path(data).resolve()), "forget_split": forget_split,
           "items": items, **({"holdout": holdout} if holdout else {}), **({"metadata": metadata} if metadata else {})}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1) + "\n", encoding="utf-8")
    return path
