"""QA records: load from JSON / JSON-lines files, TOFU-layout directories or Hugging Face datasets.

Every record is validated on load; an invalid one raises `DataError` naming the file, the 1-based
row and the field, before any model is touched.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from npo.errors import DataError

OPTIONAL_STRINGS = ("paraphrased_answer", "paraphrased_question")


@dataclass(frozen=True)
class QARecord:
    question: str
    answer: str
    paraphrased_answer: str | None = None
    paraphrased_question: str | None = None
    perturbed_answer: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["perturbed_answer"] = list(self.perturbed_answer)
        return {k: v for k, v in d.items() if v not in (None, [])}


def _check_string(value, source: str, row: int, name: str, required: bool) -> str | None:
    if value is None:
        if required:
            raise DataError(source, "missing required field", row, name)
        return None
    if not isinstance(value, str):
        raise DataError(source, f"expected a string, got {type(value).__name__}", row, name)
    if not value.strip():
        raise DataError(source, "empty string", row, name)
    return value


def record_from_dict(obj, source: str, row: int) -> QARecord:
    """Validate one raw row; `row` is 1-based for messages."""
    if not isinstance(obj, dict):
        raise DataError(source, f"expected a JSON object, got {type(obj).__name__}", row)
    question = _check_string(obj.get("question"), source, row, "question", True)
    answer = _check_string(obj.get("answer"), source, row, "answer", True)
    optional = {k: _check_string(obj.get(k), source, row, k, False) for k in OPTIONAL_STRINGS}
    perturbed = obj.get("perturbed_answer")
    if perturbed is None:
        perturbed = []
    elif not isinstance(perturbed, list):
        raise DataError(source, f"expected a list of strings, got {type(perturbed).__name__}", row,
                        "perturbed_answer")
    for j, p in enumerate(perturbed):
        _check_string(p, source, row, f"perturbed_answer[{j}]", True)
    return QARecord(question, answer, perturbed_answer=tuple(perturbed), **optional)


def _parse_file(path: Path) -> list:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(str(path), "file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(str(path), f"cannot read: {err}") from None
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(str(path), f"malformed JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
        if not isinstance(rows, list):
            raise DataError(str(path), "expected a JSON array of records")
        return rows
    if stripped.startswith("{") and "\n" in stripped.strip():
        try:  # one object spread over several lines: a single record, or not records at all
            whole = json.loads(text)
        except json.JSONDecodeError:
            whole = None  # JSON lines (or broken): the line-by-line reader says where
        if isinstance(whole, dict):
            if "question" in whole:
                return [whole]
            keys = ", ".join(list(whole)[:5]) + (", ..." if len(whole) > 5 else "")
            raise DataError(str(path), f"is one JSON object (keys: {keys}), not QA records: expected a JSON "
                                       "array of {question, answer} objects or one such object per line")
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise DataError(str(path), f"malformed JSON-lines at line {lineno}: {err.msg}", row=lineno) from None
    return rows


def load_file(path: str | Path) -> list[QARecord]:
    """A JSON array file or a JSON-lines file (TOFU's `.json` files are JSON-lines)."""
    path = Path(path)
    rows = _parse_file(path)
    return [record_from_dict(obj, str(path), i) for i, obj in enumerate(rows, start=1)]


def load_hf(name: str, config: str | None = None, split: str = "train") -> list[QARecord]:
    """A dataset through `datasets.load_dataset` (a hub id, or a local directory with a dataset card)."""
    import datasets

    source = f"{name}:{config}" if config else name
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as err:  # datasets raises many types; all mean "cannot load this"
        raise DataError(source, f"cannot load dataset: {type(err).__name__}: {err}") from None
    return [record_from_dict(dict(obj), source, i) for i, obj in enumerate(ds, start=1)]


def resolve(data: str | Path, split: str | None = None) -> Path | None:
    """The file that `data` (a file, or a TOFU-layout directory plus a split name) points at."""
    path = Path(data)
    _check_link(path)
    if path.is_dir():
        if not split:
            raise DataError(str(path), "is a directory: give a split name such as 'forget10'")
        for suffix in (".json", ".jsonl"):
            candidate = path / f"{split}{suffix}"
            _check_link(candidate)
            if candidate.exists():
                return candidate
        known = sorted(p.stem for p in path.glob("*.json*"))
        raise DataError(str(path), f"no split '{split}' (found: {', '.join(known) or 'no .json files'})")
    if path.exists():
        if split:  # a file holds one set: reading it for every split name would use it for all of them
            raise DataError(str(path), f"is a file, so the split name '{split}' cannot be looked up in it: give "
                                       "a TOFU-layout directory as 'data', or the set's file itself")
        return path
    return None


def _check_link(path: Path) -> None:
    """A link that leads nowhere (dangling, or a loop) is not 'missing': say what it is."""
    if path.is_symlink() and not path.exists():
        try:
            path.stat()
        except OSError as err:
            raise DataError(str(path), f"is a symbolic link that cannot be followed: {err.strerror}") from None


def load_qa(data: str | Path, split: str | None = None, require_nonempty: bool = True) -> list[QARecord]:
    """Load QA records from a file, a TOFU-layout directory + split, or `hf:NAME[:CONFIG]`.

    `hf:locuslab/TOFU:forget10` loads from the hub (or a local copy in its layout) via `datasets`.
    """
    text = str(data)
    if text.startswith("hf:"):
        name, _, config = text[3:].partition(":")
        records = load_hf(name, config or split)
    else:
        path = resolve(data, split)
        if path is None:
            raise DataError(text, "no such file or directory")
        records = load_file(path)
        text = str(path)
    if require_nonempty and not records:
        raise DataError(text, "no records: the set is empty")
    return records


def load_lines(path: str | Path) -> list[str]:
    """A plain text file with one answer per line (e.g. TOFU's idontknow.jsonl)."""
    path = Path(path)
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    except OSError as err:
        raise DataError(str(path), f"cannot read: {err}") from None
    lines = [ln for ln in lines if ln]
    if not lines:
        raise DataError(str(path), "no lines: the file is empty")
    return lines
