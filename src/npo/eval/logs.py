"""The official TOFU eval log format: four JSON files per evaluated model, one per eval set.

Each file maps a statistic name to its per-item values, either as a list (older TOFU code) or as an
`{"index": value}` dict (newer code). Both are read into one normalised form, `EvalLog`, with every
column a list in item order, so the metrics never care which variant a file used.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from npo.errors import NpoError

log = logging.getLogger("npo")

# eval set -> official file name; the order is the one tables and reports use
LOG_FILES: dict[str, str] = {
    "retain": "eval_log.json",
    "real_authors": "eval_real_author_wo_options.json",
    "world_facts": "eval_real_world_wo_options.json",
    "forget": "eval_log_forget.json",
}
SET_NAMES: tuple[str, ...] = tuple(LOG_FILES)

# what the aggregates need; everything else is carried along when present
REQUIRED_KEYS = ("avg_gt_loss", "avg_paraphrased_loss", "average_perturb_loss", "rougeL_recall")
OPTIONAL_KEYS = ("gt_loss", "num_token_gt", "paraphrased_loss", "num_token_paraphrased", "perturb_loss",
                 "num_token_perturb", "rouge1_recall", "generated_text")
KNOWN_KEYS = REQUIRED_KEYS + OPTIONAL_KEYS

# "legacy300": TOFU's ds_size=300, the published leaderboard logs hold 300 items per set;
# "full": every item present (newer tools); KS p-values depend on the sample size, so record it.
PROTOCOLS: dict[str, int | None] = {"full": None, "legacy300": 300}


@dataclass(frozen=True)
class EvalLog:
    """Per-item statistics of one eval set, every column a list in item order.

    `source` names the file (or "<memory>") so that errors further down can say where data came from.
    """

    columns: dict[str, list]
    source: str = "<memory>"

    def __len__(self) -> int:
        return len(self.columns[REQUIRED_KEYS[0]])

    def __contains__(self, key: object) -> bool:
        return key in self.columns

    def __getitem__(self, key: str) -> list:
        if key not in self.columns:
            raise NpoError(f"{self.source}: missing key '{key}'")
        return self.columns[key]

    def head(self, n: int | None) -> EvalLog:
        """The first n items (all when n is None): TOFU's legacy protocol keeps the first 300."""
        if n is None or n >= len(self):
            return self
        return EvalLog({k: v[:n] for k, v in self.columns.items()}, self.source)


def _as_list(value: object, source: str, key: str) -> list:
    """A column in item order from either variant; dict keys are item indices, sorted as integers."""
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        try:
            order = sorted(value, key=int)
        except (TypeError, ValueError):
            raise NpoError(f"{source}: key '{key}' is a dict whose keys are not item indices") from None
        return [value[i] for i in order]
    raise NpoError(f"{source}: key '{key}' must be a list or an {{\"index\": value}} dict, "
                   f"not {type(value).__name__}")


# the range each required statistic can take: losses are negative log-likelihoods (>= 0; +inf is a
# collapsed model, kept); NaN is never a value, of a loss or a recall. A loss a little below 0 is
# rounding (p = exp(-loss) barely above 1); a clearly negative one would give a "probability" above 1.
LOSS_TOLERANCE = 1e-3
RANGES = {"avg_gt_loss": "loss", "avg_paraphrased_loss": "loss", "average_perturb_loss": "loss",
          "rougeL_recall": "recall"}


def _check_range(x: float, source: str, key: str, i: int) -> None:
    kind = RANGES.get(key)
    if kind is None:
        return
    if math.isnan(x):
        raise NpoError(f"{source}: key '{key}', item {i}: NaN is not a {kind} (the evaluation produced no value)")
    if kind == "loss" and x < -LOSS_TOLERANCE:
        raise NpoError(f"{source}: key '{key}', item {i}: a loss (negative log-likelihood) cannot be negative, "
                       f"got {x}")


def _check_numbers(values: list, source: str, key: str, nested: bool) -> None:
    """Reject non-numbers, values out of their range and ragged perturbed lists now, with the item
    index, not deep in numpy (or silently, as a probability above 1)."""
    width = None
    for i, v in enumerate(values):
        items = v if nested else [v]
        if nested:
            if not isinstance(v, list) or not v:
                raise NpoError(f"{source}: key '{key}', item {i}: expected a non-empty list of numbers")
            if width is not None and len(v) != width:
                raise NpoError(f"{source}: key '{key}', item {i}: {len(v)} perturbed answers, "
                               f"earlier items have {width}")
            width = len(v)
        for x in items:
            if isinstance(x, bool) or not isinstance(x, int | float):
                raise NpoError(f"{source}: key '{key}', item {i}: not a number: {x!r}")
            _check_range(float(x), source, key, i)


# The NPO authors' evaluator run on 2 processes (their retain10/50/70/80 logs): each process handled
# every other batch, the two lists were concatenated process by process, and a short last round of
# batches was filled by wrapping around to the first items. Scoring and generation ran in batches of
# 30, the paraphrased and perturbed answers in batches of 7 (so 300 items give 300 and 308 values).
TWO_PROCESS_BATCHES = {30: ("avg_gt_loss", "gt_loss", "num_token_gt", "rouge1_recall", "rougeL_recall",
                            "generated_text"),
                       7: ("avg_paraphrased_loss", "paraphrased_loss", "num_token_paraphrased",
                           "average_perturb_loss", "perturb_loss", "num_token_perturb")}
# item counts the official evaluator keeps per set (ds_size 300; forget01 and forget05 are smaller)
OFFICIAL_ITEMS = {"retain": (300,), "real_authors": (100,), "world_facts": (117,), "forget": (300, 200, 40)}


def two_process_length(n: int, batch: int) -> int:
    return 2 * batch * math.ceil(n / (2 * batch))


def from_two_processes(values: list, n: int, batch: int) -> list:
    """Dataset order from the 2-process layout: batches alternate between the two halves; the
    wrap-around repeats past item n are dropped."""
    half = len(values) // 2
    first, second = values[:half], values[half:]
    out: list = []
    for start in range(0, half, batch):
        out += first[start:start + batch] + second[start:start + batch]
    return out[:n]


def _two_process_columns(columns: dict[str, list], set_name: str | None, source: str) -> dict[str, list] | None:
    """The columns in dataset order when their lengths are exactly the 2-process layout's, else None."""
    batch_of = {key: b for b, keys in TWO_PROCESS_BATCHES.items() for key in keys}
    if set_name not in OFFICIAL_ITEMS or any(k not in batch_of for k in columns):
        return None
    for n in OFFICIAL_ITEMS[set_name]:
        if all(len(v) == two_process_length(n, batch_of[k]) for k, v in columns.items()):
            lengths = sorted({len(v) for v in columns.values()})
            log.info("%s: lists of %s values are the NPO authors' 2-process layout (batches of 30 and 7 "
                     "alternating between processes, the last ones wrapped around): read as %d items in "
                     "dataset order, the repeats dropped", source, " and ".join(map(str, lengths)), n)
            return {k: from_two_processes(v, n, batch_of[k]) for k, v in columns.items()}
    return None


def parse_log(obj: object, source: str = "<memory>", set_name: str | None = None) -> EvalLog:
    """Validate one decoded log (either variant) and normalise it; unknown keys are ignored. A log of
    the NPO authors' 2-process evaluator (lists of unequal lengths) is put back in dataset order."""
    if not isinstance(obj, Mapping):
        raise NpoError(f"{source}: expected a JSON object of per-item statistics, not {type(obj).__name__}")
    for key in REQUIRED_KEYS:
        if key not in obj:
            raise NpoError(f"{source}: missing required key '{key}'")
    columns = {key: _as_list(obj[key], source, key) for key in KNOWN_KEYS if key in obj}
    if len({len(v) for v in columns.values()}) > 1:
        columns = _two_process_columns(columns, set_name, source) or columns
    n = len(columns[REQUIRED_KEYS[0]])
    if n == 0:
        raise NpoError(f"{source}: the log has no items")
    for key, values in columns.items():
        if len(values) != n:
            raise NpoError(f"{source}: key '{key}' has {len(values)} items, '{REQUIRED_KEYS[0]}' has {n}")
    for key in REQUIRED_KEYS:
        _check_numbers(columns[key], source, key, nested=key == "average_perturb_loss")
    return EvalLog(columns, source)


def read_log(path: str | os.PathLike, set_name: str | None = None) -> EvalLog:
    """Read one official log file (list or dict variant)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NpoError(f"{path}: file not found") from None
    except OSError as err:
        raise NpoError(f"{path}: cannot read: {err.strerror or err}") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise NpoError(f"{path}: malformed JSON (line {err.lineno}, column {err.colno}: {err.msg})") from None
    return parse_log(obj, str(path), set_name)


def to_json(log: EvalLog | Mapping[str, list], variant: str = "list") -> dict:
    """The object written to disk: lists (older TOFU, the default) or {"index": value} dicts (newer)."""
    columns = log.columns if isinstance(log, EvalLog) else dict(log)
    if variant == "list":
        return {k: list(v) for k, v in columns.items()}
    if variant == "dict":
        return {k: {str(i): x for i, x in enumerate(v)} for k, v in columns.items()}
    raise NpoError(f"unknown log variant '{variant}' (choose 'list' or 'dict')")


def write_log(log: EvalLog | Mapping[str, list], path: str | os.PathLike, variant: str = "list") -> Path:
    """Write one log atomically (temp file, then rename), so a crash never leaves half a file."""
    path = Path(path)
    obj = to_json(log, variant)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    # json writes NaN/Infinity as bare tokens, which Python reads back but strict parsers reject;
    # they are kept, because a collapsed model can produce infinite losses and hiding that is worse.
    tmp.write_text(json.dumps(obj, indent=4), encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_log_dir(logs: Mapping[str, EvalLog | Mapping[str, list]], directory: str | os.PathLike,
                  variant: str = "list") -> dict[str, Path]:
    """Write each given eval set under its official file name."""
    unknown = sorted(set(logs) - set(LOG_FILES))
    if unknown:
        raise NpoError(f"unknown eval set(s) {unknown}; expected some of {list(SET_NAMES)}")
    return {name: write_log(log, Path(directory) / LOG_FILES[name], variant) for name, log in logs.items()}


def load_log_dir(directory: str | os.PathLike, sets: Iterable[str] = SET_NAMES) -> dict[str, EvalLog]:
    """Read the official files of `sets` from a directory; the error lists every missing file at once."""
    directory = Path(directory)
    sets = tuple(sets)
    if not directory.is_dir():
        raise NpoError(f"{directory}: not a directory (expected a folder holding the TOFU eval logs "
                       f"{', '.join(LOG_FILES[s] for s in sets)})")
    missing = [f"{LOG_FILES[s]} ({s})" for s in sets if not (directory / LOG_FILES[s]).is_file()]
    if missing:
        raise NpoError(f"{directory}: missing TOFU eval log(s): {', '.join(missing)}")
    return {s: read_log(directory / LOG_FILES[s], s) for s in sets}


def apply_protocol(logs: Mapping[str, EvalLog], protocol: str) -> dict[str, EvalLog]:
    """Keep the items a protocol evaluates: all ("full") or the first 300 of each set ("legacy300")."""
    if protocol not in PROTOCOLS:
        raise NpoError(f"unknown protocol '{protocol}' (choose one of {', '.join(PROTOCOLS)})")
    return {name: log.head(PROTOCOLS[protocol]) for name, log in logs.items()}
