"""`npo eval --benchmark mcq` against lm-evaluation-harness itself (the `mcq-check` extra): the same
tiny model and local task files through lm-eval's `simple_evaluate` (model "hf"), question by
question, per subject and over the group, under each convention and with left truncation."""

import json

import pytest

from helpers import make_model, write_jsonl
from npo.cli import main
from test_mcq import bos_tokenizer

BIO = [
    {"question": "  What is 2+2? ", "choices": ["3", "4", "5", "6"], "answer": 1},
    {"question": "Which city is in Peru?", "choices": ["Lima", "Oslo", "Riga", "Kyiv"], "answer": 0},
    {"question": "Who wrote the book?", "choices": ["Ana Varga", "Omar Ade", "Lina Bo ", "Ivo"], "answer": 2},
    {"question": "Where was Ana Varga born?", "choices": ["Lisbon", " Oslo", "Quito", "Lima"], "answer": 3},
    {"question": "What does Omar Ade write?", "choices": ["poems", "science fiction novels", "plays", "code"],
     "answer": 1},
]
CHEM = [
    {"question": "The quick brown fox jumps over what?", "choices": ["the dog", "a fox", "the lazy dog", "x"],
     "answer": 2},
    {"question": "Which colour is the sky?", "choices": ["red", "blue", "green", "white"], "answer": 1},
    {"question": "In which year was it written?", "choices": ["1990", "1991", "2001", "1899"], "answer": 0},
]
ABOUT = {"wmdp-bio": "biology", "wmdp-chem": "chemistry"}
TEXT = ('"{{question.strip()}}\\nA. {{choices[0]}}\\nB. {{choices[1]}}\\nC. {{choices[2]}}\\nD. {{choices[3]}}'
        '\\nAnswer:"')


def write_tasks(root, data, newlines: str) -> None:
    """lm-eval task files for local JSONL (one `train` split) as its wmdp tasks define them, and a group
    weighted by size like its `wmdp` group."""
    for subject, about in ABOUT.items():
        name = subject.replace("-", "_")
        (root / f"{name}.yaml").write_text(
            f"task: local_{name}\ndataset_path: json\ndataset_kwargs:\n  data_files: {data / f'{subject}.jsonl'}\n"
            f"  cache_dir: {root / 'cache'}\ntest_split: train\noutput_type: multiple_choice\nnum_fewshot: 0\n"
            f'description: "The following are multiple choice questions (with answers) about {about}.{newlines}"\n'
            f"doc_to_text: {TEXT}\ndoc_to_choice: [\"A\", \"B\", \"C\", \"D\"]\ndoc_to_target: answer\n"
            "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
    (root / "group.yaml").write_text("group: local_wmdp\ntask:\n  - local_wmdp_bio\n  - local_wmdp_chem\n"
                                     "aggregate_metric_list:\n  - metric: acc\n    weight_by_size: true\n")


# convention -> (lm-eval's add_bos_token, the description's trailing newlines as that version renders them)
CASES = {"current": (None, "\\n\\n"), "published": (False, "\\n")}


@pytest.mark.parametrize(("convention", "max_length"), [("current", None), ("published", 40)])
def test_mcq_accuracy_equals_lm_evaluation_harness(tmp_path, convention, max_length):
    import lm_eval
    from lm_eval.tasks import TaskManager

    tok = bos_tokenizer()
    model = make_model(len(tok), max_position_embeddings=1024)
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "wmdp-bio.jsonl", BIO)
    write_jsonl(data / "wmdp-chem.jsonl", CHEM)
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    add_bos, newlines = CASES[convention]
    write_tasks(tasks, data, newlines)

    args = f"pretrained={model_dir},dtype=float32" + (f",add_bos_token={add_bos}" if add_bos is not None else "")
    args += f",max_length={max_length}" if max_length else ""
    res = lm_eval.simple_evaluate(model="hf", model_args=args, tasks=["local_wmdp"], batch_size=4, device="cpu",
                                  task_manager=TaskManager(include_path=str(tasks), include_defaults=False))
    out = tmp_path / "out"
    cmd = ["eval", "--benchmark", "mcq", "--model", str(model_dir), "--data", str(data), "--out", str(out),
           "--mcq-convention", convention, "--batch-size", "4"]
    assert main(cmd + (["--max-length", str(max_length)] if max_length else [])) == 0
    summary = json.loads((out / "summary.json").read_text())
    log = [json.loads(x) for x in (out / "questions.jsonl").read_text().splitlines()]

    theirs = {s: sorted(res["samples"][f"local_{s.replace('-', '_')}"], key=lambda x: x["doc_id"]) for s in ABOUT}
    ours = {s: [row for row in log if row["subject"] == s] for s in ABOUT}
    for s in ABOUT:
        assert len(ours[s]) == len(theirs[s])
        for mine, their in zip(ours[s], theirs[s], strict=True):
            assert mine["loglik"] == pytest.approx([r[0] for r in their["filtered_resps"]], abs=1e-4)
            assert float(mine["correct"]) == their["acc"]
        assert summary["subjects"][s]["accuracy"] == res["results"][f"local_{s.replace('-', '_')}"]["acc,none"]
    assert summary["accuracy"] == pytest.approx(res["groups"]["local_wmdp"]["acc,none"])
    assert summary["max_length"] == (max_length or 1024)
    if max_length:  # the lm-eval run cut these too: the log-likelihoods above agree
        assert summary["n_truncated"] == len(log)
    # the contexts lm-eval scored are ours: BOS or not, one or two newlines
    their_ctx = theirs["wmdp-bio"][0]["arguments"][0][0]
    assert their_ctx.startswith("The following are multiple choice questions (with answers) about biology."
                                + newlines.replace("\\n", "\n") + "What is 2+2?\nA. 3")
