"""`npo audit` then `npo verify` end to end on tiny fine-tuned models: the record's hashes against
hashlib, numbers against items.json recomputed by hand, tampering (a weight byte, a forget item, the
manifest, an earlier audit of the chain) caught by verify, a LoRA request that chains to the previous
audit and reverts exactly, and bad input refused with nothing written."""

import hashlib
import json
import math
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import npo
from helpers import CHAT_TEMPLATE, make_tokenizer, save_tiny_model, write_jsonl, write_tofu_layout
from npo.cli import main
from npo.config import build

HOLDOUT = (("Gus Hale", "Quito"), ("Ines Moor", "Accra"), ("Jon Pry", "Dakar"), ("Lea Sol", "Kyiv"),
           ("Max Ode", "Lima"), ("Ola Rin", "Riga"))
FAST = ["--template", "qa", "--max-length", "256", "--max-new-tokens", "8", "--batch-size", "32", "--resamples", "60",
        "--relearn-lr", "3e-3", "--relearn-epochs", "1", "--relearn-batch-size", "4"]


def holdout_rows():
    return [{"question": f"Where was {n} born?", "answer": f"{n} was born in {c}.",
             "paraphrased_question": f"In which city was {n} born?", "paraphrased_answer": f"The birthplace of {n} is {c}.",
             "perturbed_answer": [f"The birthplace of {n} is {o}." for o in ("Oslo", "Lima", "Riga") if o != c]}
            for n, c in HOLDOUT]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A target fine-tuned on everyone, a retain model on the retain people, and an NPO-unlearned target."""
    root = tmp_path_factory.mktemp("audit")
    data = write_tofu_layout(root / "data")
    write_jsonl(data / "holdout.json", holdout_rows())
    init = save_tiny_model(root / "init")
    common = dict(data=str(data), template="qa", max_length=64, overwrite=True, warmup_epochs=0, batch_size=4)
    before = npo.finetune(build(None, {**common, "model": str(init), "train": ["forget10", "retain90"],
                                       "out": str(root / "before"), "epochs": 5, "lr": 3e-3})) / "model"
    retain = npo.finetune(build(None, {**common, "model": str(init), "train": ["retain90"],
                                       "out": str(root / "retain"), "epochs": 5, "lr": 3e-3})) / "model"
    after = npo.unlearn(build(None, {**common, "model": str(before), "forget": "forget10", "retain": "retain90",
                                     "method": "npo_rt", "out": str(root / "after"), "epochs": 2, "lr": 3e-3})) / "model"
    request = root / "request.json"
    request.write_text(json.dumps({"id": "req-1", "benchmark": "tofu", "data": "data", "forget_split": "forget10",
                                   "holdout": "holdout", "metadata": {"received": "2024-07-01"}}))
    return SimpleNamespace(root=root, data=data, before=before, retain=retain, after=after, request=request,
                           audits=root / "audits")


@pytest.fixture(scope="module")
def audit1(world):
    out = world.audits / "req1"
    args = ["audit", "--request", str(world.request), "--model", str(world.before), "--unlearned", str(world.after),
            "--retain-model", str(world.retain), "--out", str(out), *FAST]
    assert main(args) == 0
    return out


def verify(capsys, *args):
    capsys.readouterr()
    rc = main(["verify", *map(str, args)])
    return rc, capsys.readouterr().out


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_audit_record_hashes_and_numbers_check_out(world, audit1, capsys):
    m = json.loads((audit1 / "manifest.json").read_text())
    weights = world.after / "model.safetensors"
    assert m["models"]["after"]["files"]["model.safetensors"] == sha(weights)
    assert m["models"]["after"]["run"]["config"]["method"] == "npo_rt"
    rows = [json.loads(line) for line in (world.data / "forget10.json").read_text().splitlines()]
    canonical = [json.dumps({"answer": " ".join(r["answer"].split()), "question": " ".join(r["question"].split())},
                            separators=(",", ":")).encode() for r in rows]
    assert [i["sha256"] for i in m["forget_items"]["items"]] == [hashlib.sha256(c).hexdigest() for c in canonical]
    assert m["lineage"]["previous"] is None and m["lineage"]["revert"]["exact_by_removal"] is False
    for line in (audit1 / "SHA256SUMS").read_text().splitlines():  # what `sha256sum -c SHA256SUMS` does
        digest, rel = line.split("  ")
        assert sha(audit1 / rel) == digest

    items, results = json.loads((audit1 / "items.json").read_text()), json.loads((audit1 / "results.json").read_text())
    loss = items["scores"]["after"]["forget"]["loss"]
    assert results["measures"]["after.forget.prob"]["value"] == pytest.approx(np.mean(np.exp(loss)))
    f, h = loss, items["scores"]["after"]["holdout"]["loss"]
    pairs = [(a > b) + 0.5 * (a == b) for a in f for b in h]
    assert results["measures"]["after.auc.loss"]["value"] == pytest.approx(sum(pairs) / len(pairs))
    forget_log = json.loads((audit1 / "eval" / "after" / "eval_log_forget.json").read_text())
    assert results["tofu"]["after"]["forget_prob"]["value"] == pytest.approx(
        np.mean([math.exp(-x) for x in forget_log["avg_gt_loss"]]))
    assert "generated_text" not in forget_log  # no forget text in the record by default
    every = "".join(p.read_text() for p in audit1.rglob("*") if p.suffix in (".json", ".md", ".html"))
    assert not any(r["answer"] in every for r in rows)
    statuses = {v["criterion"]: v["status"] for v in results["verdicts"]}
    assert set(statuses.values()) <= {"pass", "fail", "n/a"} and statuses["forget_quality"] != "n/a"
    assert all(v["rule"] for v in results["verdicts"])
    page = (audit1 / "audit.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "src='criteria.png'" not in page and "http" not in page
    assert (audit1 / "audit.md").read_text().startswith("# Deletion audit: request req-1")

    rc, out = verify(capsys, audit1, "--rescore")
    assert rc == 0, out
    assert "FAIL" not in out and "rescore: the unlearned model's forget-answer losses reproduce" in out


def test_flipping_one_weight_byte_fails_verify(world, audit1, tmp_path, capsys):
    copy = shutil.copytree(world.after, tmp_path / "after")
    weights = copy / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-3] ^= 0x01
    weights.write_bytes(bytes(blob))
    rc, out = verify(capsys, audit1, "--model", copy)
    assert rc == 1
    assert "FAIL  model after: model.safetensors changed (weights" in out
    assert "ok    model before:" in out  # only what changed is named


def test_editing_one_forget_item_fails_verify(world, audit1, capsys):
    path = world.data / "forget10.json"
    original = path.read_text()
    lines = original.splitlines()
    row = json.loads(lines[1])
    row["answer"] = row["answer"].replace("born", "raised")
    try:
        path.write_text("\n".join([lines[0], json.dumps(row), *lines[2:]]) + "\n")
        rc, out = verify(capsys, audit1)
        assert rc == 1
        assert f"FAIL  forget item row 2 of {path}: changed" in out
        assert "forget item row 1 " not in out
    finally:
        path.write_text(original)
    assert verify(capsys, audit1)[0] == 0


def test_tampered_manifest_fails_verify_and_is_refused_as_previous(world, audit1, tmp_path, capsys):
    bad = shutil.copytree(audit1, tmp_path / "bad")
    text = (bad / "manifest.json").read_text()
    digest = json.loads(text)["models"]["after"]["weights_sha256"]
    (bad / "manifest.json").write_text(text.replace(digest, "0" * 64))
    rc, out = verify(capsys, bad)
    assert rc == 1 and "FAIL  audit files: manifest.json changed since the audit" in out
    capsys.readouterr()
    out_dir = tmp_path / "next"
    rc = main(["audit", "--request", str(world.request), "--model", str(world.after), "--unlearned", str(world.after),
               "--previous", str(bad), "--out", str(out_dir), *FAST])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "previous audit" in err and "fails its own hashes" in err
    assert not out_dir.exists()


def test_lora_request_chains_to_the_previous_audit_and_reverts_exactly(world, audit1, capsys):
    from peft import PeftModel
    from safetensors.torch import load_file

    from npo.modeling import load_model

    run = npo.unlearn(build(None, dict(
        model=str(world.after), data=str(world.data), forget="forget10", retain="retain90", method="npo_rt",
        out=str(world.root / "lora"), epochs=1, lr=1e-2, batch_size=4, lora_r=4, lora_alpha=8, save_merged=False,
        template="qa", max_length=64, warmup_epochs=0, overwrite=True)))
    adapter = run / "model"
    out = world.audits / "req2"  # next to req1: the chain is found without --previous
    assert main(["audit", "--request", str(world.request), "--model", str(world.after), "--unlearned", str(adapter),
                 "--out", str(out), "--probes", "relearn", *FAST]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["lineage"]["previous"]["audit_sha256"] == sha(audit1 / "SHA256SUMS")
    assert m["models"]["after"]["kind"] == "adapter" and m["lineage"]["revert"]["exact_by_removal"] is True
    rc, text = verify(capsys, out)
    assert rc == 0, text
    assert "ok    chain: previous audit req1 (request 'req-1') intact" in text
    first = sha(out / "SHA256SUMS")
    assert main(["audit", "--request", str(world.request), "--model", str(world.after), "--unlearned", str(adapter),
                 "--out", str(out), "--probes", "", *FAST]) == 2  # exists: refused without --overwrite
    assert main(["audit", "--request", str(world.request), "--model", str(world.after), "--unlearned", str(adapter),
                 "--out", str(out), "--probes", "", "--overwrite", *FAST]) == 0
    assert sha(out / "SHA256SUMS") != first and sorted(p.name for p in world.audits.iterdir()) == ["req1", "req2"]
    assert json.loads((out / "manifest.json").read_text())["lineage"]["previous"]["path"] == str(audit1.resolve())

    # reverting = dropping the adapter gives the previous model's weights exactly
    reverted = PeftModel.from_pretrained(load_model(str(world.after), torch.float32), str(adapter)).unload()
    base = load_file(str(world.after / "model.safetensors"))
    state = reverted.state_dict()
    assert set(base) <= set(state) and all(torch.equal(state[k], base[k]) for k in base)
    merged = PeftModel.from_pretrained(load_model(str(world.after), torch.float32), str(adapter)).merge_and_unload()
    assert any(not torch.equal(merged.state_dict()[k], base[k]) for k in base)  # the adapter did change something

    page = audit1 / "audit.md"
    original = page.read_bytes()
    try:
        page.write_bytes(original + b"\n")
        rc, text = verify(capsys, out)
        assert rc == 1 and "FAIL  chain broken: previous audit" in text
    finally:
        page.write_bytes(original)


def test_bad_input_is_one_line_exit_2_and_nothing_written(world, tmp_path, capsys, monkeypatch):
    other = shutil.copytree(world.after, tmp_path / "other_tok")
    make_tokenizer(CHAT_TEMPLATE).save_pretrained(other)
    parent = tmp_path / "audits"
    parent.mkdir()
    base = ["audit", "--request", str(world.request), "--model", str(world.before), *FAST]
    capsys.readouterr()
    assert main([*base, "--unlearned", str(other), "--out", str(parent / "a")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "different tokenizer" in err
    bad_request = tmp_path / "bad.json"
    bad_request.write_text(json.dumps({"id": "x", "benchmark": "tofu", "data": str(world.data),
                                       "forget_split": "forget10", "items": [{"question": "Who?", "answer": "No."}]}))
    assert main(["audit", "--request", str(bad_request), "--model", str(world.before), "--unlearned",
                 str(world.after), "--out", str(parent / "b"), *FAST]) == 2
    assert "items[0]: the item (question 'Who?') is not in the forget split" in capsys.readouterr().err
    assert main(["verify", str(tmp_path)]) == 2  # not an audit directory

    import npo.audit.report

    def boom(*a, **k):
        raise npo.errors.NpoError("disk full")

    monkeypatch.setattr(npo.audit.report, "write_report", boom)
    assert main([*base, "--unlearned", str(world.after), "--out", str(parent / "c"), "--probes", ""]) == 2
    assert "disk full" in capsys.readouterr().err
    assert list(parent.iterdir()) == []  # no audit, no temporary directory left
