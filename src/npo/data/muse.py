"""MUSE's data layout (Shi et al. 2025): the files its evaluation reads, local or from the hub.

A local directory holds what muse_bench's `load_data.py` writes:
- `verbmem/forget.json`: a list of `{"prompt", "gt"}`;
- `knowmem/{forget_qa,retain_qa,forget_qa_icl,retain_qa_icl}.json`: lists of `{"question", "answer"}`
  (early releases named the retain files `retain2_qa*`; those names are read too);
- `privleak/{forget,retain,holdout}.json`: lists of strings (early releases: `retain2`);
- `raw/`, `scal/`, `sust/`: the training corpora (npo/data/text.py reads those).
`hf:NAME` (e.g. `hf:muse-bench/MUSE-News`) reads the same splits through `datasets`: config
`verbmem`, split `forget`, and so on. Every item is checked on load; a bad one raises `DataError`
naming the file, the 1-based item and the field.
"""

from __future__ import annotations

from pathlib import Path

from npo.data.text import read_json, text_items
from npo.errors import DataError

# criterion side -> (questions, in-context examples)
KNOWMEM = {"forget": ("forget_qa", "forget_qa_icl"), "retain": ("retain_qa", "retain_qa_icl")}
PRIVLEAK = ("forget", "retain", "holdout")
OLD_NAMES = {"retain_qa": "retain2_qa", "retain_qa_icl": "retain2_qa_icl", "retain": "retain2"}


def hub_split(spec: str) -> tuple[str, str]:
    """`forget` -> ("raw", "forget"); `sust/forget_2` -> ("sust", "forget_2")."""
    config, _, split = spec.rpartition("/")
    if not split:
        raise DataError(spec, "expected a split name such as 'forget' or 'sust/forget_2'")
    return config or "raw", split


def hub_rows(name: str, config: str, split: str) -> list[dict]:
    """The rows of one split of a hub dataset (or a local copy with a dataset card), as dicts."""
    import datasets

    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as err:  # datasets raises many types; all mean "cannot load this"
        raise DataError(f"hf:{name}:{config}:{split}", f"cannot load dataset: {type(err).__name__}: {err}") from None
    return [dict(row) for row in ds]


def _string(row, where: str, field: str) -> str:
    if field not in row:
        raise DataError(where, "missing required field", field=field)
    value = row[field]
    if not isinstance(value, str):
        raise DataError(where, f"expected a string, got {type(value).__name__}", field=field)
    if not value.strip():
        raise DataError(where, "empty string", field=field)
    return value


class MuseData:
    """The evaluation files of one MUSE corpus (a directory or `hf:NAME`), validated on load."""

    def __init__(self, data: str):
        self.data = str(data)
        self.hub = self.data.startswith("hf:")
        if not self.hub and not Path(self.data).is_dir():
            raise DataError(self.data, "not a directory (expected MUSE's layout: verbmem/, knowmem/, privleak/)")

    def _rows(self, config: str, split: str) -> tuple[list, str]:
        if self.hub:
            return hub_rows(self.data[3:], config, split), f"{self.data}:{config}:{split}"
        path = Path(self.data) / config / f"{split}.json"
        old = Path(self.data) / config / f"{OLD_NAMES.get(split, split)}.json"
        if not path.is_file() and old.is_file():
            path = old
        rows = read_json(path)
        if not isinstance(rows, list):
            raise DataError(str(path), f"expected a JSON list, got {type(rows).__name__}")
        if not rows:
            raise DataError(str(path), "no items: the list is empty")
        return rows, str(path)

    def _pairs(self, config: str, split: str, fields: tuple[str, str]) -> list[tuple[str, str]]:
        rows, source = self._rows(config, split)
        out = []
        for i, row in enumerate(rows, start=1):
            where = f"{source}, item {i}"
            if not isinstance(row, dict):
                raise DataError(where, f"expected a JSON object with {' and '.join(fields)}, got {type(row).__name__}")
            out.append((_string(row, where, fields[0]), _string(row, where, fields[1])))
        return out

    def source(self, config: str, split: str) -> str:
        return f"{self.data}:{config}:{split}" if self.hub else str(Path(self.data) / config / f"{split}.json")

    def verbmem(self) -> list[tuple[str, str]]:
        """(prompt, ground-truth continuation) of each VerbMem item."""
        return self._pairs("verbmem", "forget", ("prompt", "gt"))

    def knowmem(self, side: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """(questions, in-context examples) of KnowMem on the forget or retain side, each (q, a)."""
        qa, icl = KNOWMEM[side]
        return (self._pairs("knowmem", qa, ("question", "answer")),
                self._pairs("knowmem", icl, ("question", "answer")))

    def privleak(self, split: str) -> list[str]:
        rows, source = self._rows("privleak", split)
        return text_items(rows, source)

    def has_privleak(self, split: str) -> bool:
        if self.hub:
            return True
        root = Path(self.data) / "privleak"
        return (root / f"{split}.json").is_file() or (root / f"{OLD_NAMES.get(split, split)}.json").is_file()
