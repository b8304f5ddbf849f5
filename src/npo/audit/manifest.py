"""Hashes that tie an audit to exactly what it looked at: forget items (normalised text), data files,
every file of each model, the tokenizer, the run that produced a model, and the environment.

Every digest is SHA-256, written as lower-case hex. Three kinds:
- a file: the SHA-256 of its bytes;
- a group of files (a model's weights, its tokenizer files, an audit directory): the SHA-256 of the
  group's listing in `sha256sum` format, one line `<hex>  <relative path>` per file, sorted by
  path, each line ending in a newline, so `sha256sum -c` can check the listing itself;
- a forget item: the SHA-256 of its canonical form (see `item_canonical`).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import unicodedata
from pathlib import Path

from npo.errors import NpoError

NORMALISATION = ("each of question and answer: Unicode NFC, then every run of whitespace (Python's str.split) "
                 "replaced by one space and leading/trailing whitespace removed, case kept; the item is the "
                 "UTF-8 bytes of the JSON object {\"answer\": A, \"question\": Q} with sorted keys, no spaces "
                 "after separators and non-ASCII characters written as themselves")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "tokenizer.model", "added_tokens.json", "chat_template.jinja", "chat_template.json", "vocab.txt")
PACKAGES = ("npo", "torch", "transformers", "accelerate", "peft", "safetensors", "tokenizers", "numpy", "scipy",
            "rouge-score", "matplotlib", "pyyaml")
_CHUNK = 1 << 20


def normalise_text(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", text).split())


def item_canonical(question: str, answer: str) -> bytes:
    obj = {"answer": normalise_text(answer), "question": normalise_text(question)}
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def item_sha256(question: str, answer: str) -> str:
    return hashlib.sha256(item_canonical(question, answer)).hexdigest()


def set_sha256(item_hashes) -> str:
    """One digest for a set of items, independent of their order: the sorted item digests, one a line."""
    return hashlib.sha256("".join(h + "\n" for h in sorted(item_hashes)).encode("ascii")).hexdigest()


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def listing(files: dict[str, str]) -> str:
    """`sha256sum` format: `<hex>  <path>` lines sorted by path."""
    return "".join(f"{files[p]}  {p}\n" for p in sorted(files))


def listing_sha256(files: dict[str, str]) -> str:
    return hashlib.sha256(listing(files).encode("utf-8")).hexdigest()


def parse_listing(text: str, source: str) -> dict[str, str]:
    out = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        digest, sep, path = line.partition("  ")
        if not sep or len(digest) != 64 or not path:
            raise NpoError(f"{source}, line {lineno}: expected '<sha256>  <path>'")
        out[path] = digest
    return out


def tree_files(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """relative path -> SHA-256 of every regular file under root (recursively), except names in skip."""
    files = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and rel not in skip and not any(part.startswith(".") for part in path.relative_to(root).parts):
            files[rel] = file_sha256(path)
    return files


def file_kind(rel: str) -> str:
    name = rel.rsplit("/", 1)[-1]
    if name.endswith(WEIGHT_SUFFIXES):
        return "weights"
    if name in TOKENIZER_FILES:
        return "tokenizer"
    return "other"


def tokenizer_fingerprint(tok) -> str:
    """What makes two tokenizers encode text the same way, independent of how their files were written:
    the vocabulary (token -> id), the special tokens and the chat template."""
    obj = {"vocab": sorted(tok.get_vocab().items(), key=lambda kv: kv[1]),
           "special": {k: str(v) for k, v in sorted(tok.special_tokens_map.items())},
           "chat_template": getattr(tok, "chat_template", None)}
    return hashlib.sha256(json.dumps(obj, ensure_ascii=False, sort_keys=True).encode("utf-8")).hexdigest()


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def run_record(model_dir: Path) -> dict | None:
    """When the model is `RUN/model` of an `npo unlearn` / `npo finetune` run: its resolved config,
    environment, final state and seed, each with the digest of its file."""
    import yaml

    run = model_dir.parent
    config = run / "config.yaml"
    if model_dir.name != "model" or not config.is_file():
        return None
    out = {"dir": str(run.resolve()), "config_sha256": file_sha256(config),
           "config": yaml.safe_load(config.read_text(encoding="utf-8"))}
    for name in ("env.json", "done.json"):
        if (run / name).is_file():
            out[name.removesuffix(".json")] = _read_json(run / name)
            out[f"{name.removesuffix('.json')}_sha256"] = file_sha256(run / name)
    out["seed"] = (out["config"] or {}).get("seed")
    return out


def model_record(path: str | Path) -> dict:
    """Every file of a local model directory with its digest, the group digests of its weights and its
    tokenizer files, whether it is a LoRA adapter (and on which base), and the run that made it."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise NpoError(f"model directory not found: {path} (an audit hashes local model directories only)")
    files = tree_files(root)
    weights = {p: h for p, h in files.items() if file_kind(p) == "weights"}
    if not weights:
        raise NpoError(f"{path}: no weight files ({', '.join(WEIGHT_SUFFIXES)}) to hash")
    record = {"path": str(root.resolve()), "files": files, "weights_sha256": listing_sha256(weights),
              "tokenizer_files_sha256": listing_sha256({p: h for p, h in files.items()
                                                        if file_kind(p) == "tokenizer"}),
              "kind": "adapter" if (root / "adapter_config.json").is_file() else "full",
              "run": run_record(root)}
    if record["kind"] == "adapter":
        cfg = _read_json(root / "adapter_config.json") or {}
        record["adapter_base"] = cfg.get("base_model_name_or_path")
    return record


def check_model_files(record: dict, path: str | Path | None = None) -> list[tuple[bool, str]]:
    """(ok, line) per problem or one summary line: every recorded file rehashed at `path` (default: the
    recorded path); changed, missing and unrecorded files each named."""
    root = Path(path or record["path"]).expanduser()
    if not root.is_dir():
        return [(False, f"model directory missing: {root}")]
    now = tree_files(root)
    lines = []
    for rel, digest in sorted(record["files"].items()):
        if rel not in now:
            lines.append((False, f"{rel} missing"))
        elif now[rel] != digest:
            lines.append((False, f"{rel} changed ({file_kind(rel)}: sha256 {now[rel][:12]}..., "
                                 f"recorded {digest[:12]}...)"))
    lines += [(False, f"{rel} not in the record (added after the audit)") for rel in sorted(set(now) - set(record["files"]))]
    return lines or [(True, f"{len(now)} files match ({root})")]


def git_state() -> dict:
    from npo.runtime import git_revision

    rev, dirty = git_revision(), None
    if rev:
        try:
            out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                 text=True, timeout=5, cwd=Path(__file__).resolve().parent)
            dirty = bool(out.stdout.strip()) if out.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            dirty = None
    return {"git_revision": rev, "git_dirty": dirty}


def package_versions() -> dict[str, str | None]:
    from importlib import metadata

    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out
