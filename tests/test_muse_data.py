"""Raw-text corpora cut into windows as MUSE cuts them, the MUSE layout (local and through `datasets`),
and the errors bad MUSE input gets."""

import json

import pytest
import torch

from helpers import make_model, make_tokenizer, save_tiny_model
from npo.cli import main
from npo.config import build
from npo.data.batches import collate
from npo.data.muse import MuseData
from npo.data.sets import load_sets
from npo.data.text import corpus_windows, item_windows, resolve_corpus
from npo.errors import NpoError
from npo.logprobs import sequence_logprobs
from npo.methods import METHODS
from npo.testbed.news import build_layout, write_layout

TEN = "The quick brown fox jumps over the lazy dog."  # 10 tokens t0..t9 under the test tokenizer


def test_corpus_windows_as_muse_cuts_them(tokenizer):
    t = tokenizer(TEN, add_special_tokens=False)["input_ids"]
    assert len(t) == 10 and tokenizer.bos_token_id == 1
    # max_length 4: chunks of 3 tokens after BOS; the last one, [BOS, t9], is filled from window 0
    windows = corpus_windows(tokenizer, TEN, 4)
    assert [list(w.input_ids) for w in windows] == [[1, *t[0:3]], [1, *t[3:6]], [1, *t[6:9]], [1, t[9], 1, t[0]]]
    assert all(w.n_prompt == 1 and w.n_labels == 3 for w in windows)
    # max_length 6: two full windows, nothing to wrap
    assert [list(w.input_ids) for w in corpus_windows(tokenizer, TEN, 6)] == [[1, *t[0:5]], [1, *t[5:10]]]
    # one short window stays as it is
    assert [list(w.input_ids) for w in corpus_windows(tokenizer, TEN, 20)] == [[1, *t]]


def test_json_items_are_one_window_each(tokenizer):
    items = item_windows(tokenizer, [TEN, "Who wrote the book?"], max_length=6)
    assert list(items[0].input_ids) == tokenizer(TEN)["input_ids"][:6] and items[0].truncated
    assert not items[1].truncated and items[1].n_prompt == 1


def test_names_resolve_in_the_muse_layout(tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "sust").mkdir()
    (tmp_path / "raw" / "forget.txt").write_text("one\n\ntwo")
    (tmp_path / "raw" / "forget.json").write_text('["one", "two"]')
    (tmp_path / "sust" / "forget_2.json").write_text('[{"text": "three"}]')
    assert resolve_corpus(str(tmp_path), "forget") == ("one\n\ntwo", str(tmp_path / "raw" / "forget.txt"))
    assert resolve_corpus(str(tmp_path), "sust/forget_2")[0] == ["three"]
    assert resolve_corpus(None, str(tmp_path / "raw" / "forget.json"))[0] == ["one", "two"]
    with pytest.raises(NpoError, match="no corpus 'retain1'"):
        resolve_corpus(str(tmp_path), "retain1")


def test_a_window_log_prob_sums_every_token_but_the_first(tmp_path):
    """NPO on raw text compares summed window log-probs: every token after the window's first."""
    model_dir = save_tiny_model(tmp_path / "m")
    data = write_layout(tmp_path / "d", fold_people=1, retain_people=1, holdout_people=1)
    cfg = build(None, {"model": str(model_dir), "data": str(data), "data_format": "text", "forget": "forget",
                       "retain": "retain1", "max_length": 32, "out": "x"})
    tok = make_tokenizer()
    sets = load_sets(cfg, METHODS["npo_rt"], tok, "qa")
    assert set(sets) == {"forget", "retain"} and all(len(w.input_ids) == 32 for w in sets["forget"])
    model = make_model(len(tok))
    examples = sets["forget"][:3]
    with torch.no_grad():
        logp, n = sequence_logprobs(model, collate(examples, tok.pad_token_id))
        for k, ex in enumerate(examples):
            ids = torch.tensor([ex.input_ids])
            naive = torch.log_softmax(model(ids).logits[0, :-1].float(), -1).gather(-1, ids[0, 1:, None]).sum()
            assert logp[k] == pytest.approx(float(naive), abs=1e-4) and n[k] == ex.n_labels == 31
    with pytest.raises(NpoError, match="refusal"):
        load_sets(build(None, {**cfg.__dict__, "method": "idk_rt"}), METHODS["idk_rt"], tok, "qa")


def _hub_copy(layout: dict, root):
    """The layout as a dataset repository: JSON-lines files declared as configs and splits in the card."""
    configs: dict[str, list[str]] = {}
    for path, content in layout.items():
        if not path.endswith(".json"):
            continue
        config, split = path.removesuffix(".json").split("/")
        rows = [r if isinstance(r, dict) else {"text": r} for r in content]
        (root / config).mkdir(parents=True, exist_ok=True)
        (root / config / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        configs.setdefault(config, []).append(split)
    card = ["---", "configs:"]
    for config, splits in configs.items():
        card += [f"- config_name: {config}", "  data_files:"]
        card += [f"  - split: {s}\n    path: {config}/{s}.jsonl" for s in splits]
    (root / "README.md").write_text("\n".join([*card, "---", ""]))
    return root


def test_hub_layout_reads_like_the_local_one(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    layout = build_layout(fold_people=1, retain_people=1, holdout_people=1)
    local = write_layout(tmp_path / "local", fold_people=1, retain_people=1, holdout_people=1)
    hub = _hub_copy(layout, tmp_path / "hub")
    assert MuseData(f"hf:{hub}").verbmem() == MuseData(str(local)).verbmem()
    assert MuseData(f"hf:{hub}").privleak("holdout") == MuseData(str(local)).privleak("holdout")
    # hub rows are joined by a blank line, as MUSE writes its .txt files
    assert resolve_corpus(f"hf:{hub}", "sust/forget_2")[0] == (local / "sust" / "forget_2.txt").read_text()


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("muse_bad")
    return save_tiny_model(root / "model"), write_layout(root / "data", fold_people=1, retain_people=1, holdout_people=1)


def test_verbmem_item_without_gt_names_file_item_and_field(small, tmp_path, capsys):
    model_dir, data = small
    bad = tmp_path / "data"
    import shutil

    shutil.copytree(data, bad)
    items = json.loads((bad / "verbmem" / "forget.json").read_text())
    del items[1]["gt"]
    (bad / "verbmem" / "forget.json").write_text(json.dumps(items))
    out = tmp_path / "eval"
    assert main(["eval", "--benchmark", "muse", "--model", str(model_dir), "--data", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{bad / 'verbmem' / 'forget.json'}, item 2, field 'gt': missing required field" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


@pytest.mark.parametrize("content, words", [
    (b"  \n\n ", "empty corpus"),
    (b"caf\xe9 au lait", "not UTF-8 text: byte 0xe9 at offset 3"),
])
def test_bad_corpus_files_stop_unlearning_before_anything_is_written(small, tmp_path, capsys, content, words):
    model_dir, data = small
    corpus = tmp_path / "forget.txt"
    corpus.write_bytes(content)
    out = tmp_path / "run"
    code = main(["unlearn", "--model", str(model_dir), "--data", str(data), "--forget", str(corpus),
                 "--retain", "retain1", "--out", str(out), "data_format=text", "max_length=32"])
    assert code == 2
    assert f"{corpus}: {words}" in capsys.readouterr().err and not out.exists()


def test_a_json_corpus_item_that_is_not_text(small, tmp_path, capsys):
    model_dir, data = small
    corpus = tmp_path / "forget.json"
    corpus.write_text('["fine text", {"text": 3}]')
    code = main(["unlearn", "--model", str(model_dir), "--forget", str(corpus), "--method", "npo",
                 "--out", str(tmp_path / "run"), "data_format=text"])
    assert code == 2
    assert f"{corpus}, item 2, field 'text': expected a string, got int" in capsys.readouterr().err


def test_jsonl_corpus_is_one_sequence_per_line(tmp_path):
    """WMDP's forget corpora: JSON lines of {"text": ...}, one sequence each, like a .json list."""
    from npo.data.text import read_corpus

    path = tmp_path / "bio.jsonl"
    path.write_text('{"text": "first document"}\n\n"second document"\n')
    assert read_corpus(path) == ["first document", "second document"]
    path.write_text('{"text": "ok"}\n{"text": \n')
    from npo.errors import DataError

    with pytest.raises(DataError, match="line 2"):
        read_corpus(path)
