"""An audit directory's own digest and the hash chain between successive audits of one model lineage.

`SHA256SUMS` lists every other file of the audit directory in `sha256sum` format (so `sha256sum -c
SHA256SUMS` checks it without npo); the audit's hash is the SHA-256 of that file. An audit whose
BEFORE model is the AFTER model of an earlier audit records the earlier audit's hash and where it
lies, so changing any file of any earlier audit breaks every later link. The last audit of a chain
is only as safe as the place its hash is kept: `npo audit` prints it; publish or sign it.
"""

from __future__ import annotations

import json
from pathlib import Path

from npo.audit.manifest import file_sha256, listing, parse_listing, tree_files
from npo.errors import NpoError

SUMS = "SHA256SUMS"
MANIFEST = "manifest.json"


def write_sums(directory: Path) -> str:
    (directory / SUMS).write_text(listing(tree_files(directory, skip=(SUMS,))), encoding="utf-8")
    return file_sha256(directory / SUMS)


def check_sums(directory: Path) -> list[tuple[bool, str]]:
    """(ok, line) per changed, missing or unlisted file, or one line saying all match."""
    path = directory / SUMS
    if not path.is_file():
        return [(False, f"{SUMS} missing in {directory}")]
    try:
        listed = parse_listing(path.read_text(encoding="utf-8"), str(path))
    except NpoError as err:
        return [(False, str(err))]
    now = tree_files(directory, skip=(SUMS,))
    lines = []
    for rel, digest in sorted(listed.items()):
        if rel not in now:
            lines.append((False, f"{rel} missing"))
        elif now[rel] != digest:
            lines.append((False, f"{rel} changed since the audit (sha256 {now[rel][:12]}..., listed {digest[:12]}...)"))
    lines += [(False, f"{rel} not listed in {SUMS} (added after the audit)") for rel in sorted(set(now) - set(listed))]
    return lines or [(True, f"{len(listed)} files match {SUMS}")]


def load_manifest(directory: Path) -> dict:
    path = directory / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NpoError(f"{directory}: not an audit directory ({MANIFEST} missing)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise NpoError(f"{path}: unreadable: {err}") from None


def link_to(previous: Path, before_weights: str) -> dict:
    """The chain link to an earlier audit, after checking it is intact and that its AFTER model is this
    audit's BEFORE model; refuses (NpoError) otherwise."""
    previous = Path(previous)
    bad = [line for ok, line in check_sums(previous) if not ok]
    if bad:
        raise NpoError(f"previous audit {previous} fails its own hashes: {bad[0]}")
    manifest = load_manifest(previous)
    after = manifest["models"]["after"]["weights_sha256"]
    if after != before_weights:
        raise NpoError(f"previous audit {previous}: its unlearned model (weights {after[:12]}...) is not this "
                       f"audit's model before unlearning (weights {before_weights[:12]}...)")
    return {"audit_sha256": file_sha256(previous / SUMS), "path": str(previous.resolve()),
            "request_id": manifest["request"]["id"], "after_weights_sha256": after}


def find_previous(out: Path, before_weights: str) -> Path | None:
    """An audit next to `out` (a sibling directory) whose AFTER model has BEFORE's weights."""
    parent = out.resolve().parent
    found = []
    for path in sorted(parent.glob(f"*/{MANIFEST}")):
        if path.parent == out.resolve():
            continue
        try:
            if load_manifest(path.parent)["models"]["after"]["weights_sha256"] == before_weights:
                found.append(path.parent)
        except (NpoError, KeyError, TypeError):
            continue
    if len(found) > 1:
        raise NpoError(f"several audits in {parent} have this model as their unlearned model "
                       f"({', '.join(p.name for p in found)}): pass --previous to choose one")
    return found[0] if found else None


def check_chain(directory: Path, manifest: dict, depth: int = 0) -> list[tuple[bool, str]]:
    """One line per link, back to the first audit of the lineage."""
    link = manifest.get("lineage", {}).get("previous")
    if not link:
        return [(True, "chain: first audit of this lineage (no previous audit)" if depth == 0
                 else f"chain: {directory.name} is the first audit of the lineage")]
    prev = Path(link["path"])
    if not prev.is_dir():
        rel = directory.resolve().parent / prev.name  # the audits were moved together
        prev = rel if rel.is_dir() else prev
    if not prev.is_dir():
        return [(False, f"chain: previous audit {link['path']} not found")]
    if not (prev / SUMS).is_file() or file_sha256(prev / SUMS) != link["audit_sha256"]:
        return [(False, f"chain broken: previous audit {prev} has changed ({SUMS} sha256 differs from the "
                        f"recorded {link['audit_sha256'][:12]}...)")]
    bad = [line for ok, line in check_sums(prev) if not ok]
    if bad:
        return [(False, f"chain broken: previous audit {prev}: {bad[0]}")]
    prev_manifest = load_manifest(prev)
    if prev_manifest["models"]["after"]["weights_sha256"] != manifest["models"]["before"]["weights_sha256"]:
        return [(False, f"chain broken: the unlearned model of {prev} is not the model before unlearning here")]
    line = (True, f"chain: previous audit {prev.name} (request '{link['request_id']}') intact, its unlearned model "
                  "is this audit's model before unlearning")
    return [line, *check_chain(prev, prev_manifest, depth + 1)]
