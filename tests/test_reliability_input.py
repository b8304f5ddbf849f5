"""Bad input beyond the basics: one line and exit 2, never a traceback, a silent default or a dubious
value accepted; messages that name the right option; help generated from TrainConfig."""

import dataclasses
import json
import math
import os
import shutil

import pytest
import torch

from helpers import qa_rows, save_tiny_model, write_jsonl, write_tofu_layout
from npo.cli import _Parser, main
from npo.config import TrainConfig, build, key_help, parse_overrides
from npo.errors import NpoError

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("input")
    return save_tiny_model(root / "model"), write_tofu_layout(root / "data", n_forget=8, n_retain=12)


def _cli(args, capsys):
    """(exit code, the error line: the last line on stderr after npo's progress lines, stdout)."""
    code = main(args)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    lines = captured.err.strip().splitlines()
    return code, lines[-1] if lines else "", captured.out


def _unlearn(tiny, out, *extra):
    model, data = tiny
    return ["unlearn", "--model", str(model), "--data", str(data), "--forget", "forget10", "--retain", "retain90",
            "--out", str(out), "template=qa", *extra]


# ----------------------------------------------------------------------------- numbers and overrides


@pytest.mark.parametrize("extra, words", [
    (["--seed", str(2**40)], "'seed' must be between 0 and 4294967295"),
    (["seed=-1"], "'seed' must be between 0 and 4294967295"),
    (["--lr", "inf"], "'lr' must be a finite number, got inf"),
    (["lr=.inf"], "'lr' must be a finite number, got inf"),
    (["beta=.nan"], "'beta' must be a finite number, got nan"),
    (["--beta", "nan"], "'beta' must be a finite number, got nan"),
    (["max_grad_norm=-.inf"], "'max_grad_norm' must be a finite number"),
    (["max_length=" + str(2**70)], "'max_length' is out of range"),
    (["lora_r=4", "lora_dropout=1"], "'lora_dropout' must be below 1"),
])
def test_out_of_range_and_nonfinite_numbers_are_refused(tiny, tmp_path, capsys, extra, words):
    code, err, _ = _cli(_unlearn(tiny, tmp_path / "out", *extra), capsys)
    assert code == 2 and words in err, err
    assert not (tmp_path / "out").exists()


def test_numbers_in_scientific_notation_are_numbers(tmp_path):
    assert parse_overrides(["lr=1e-4"]) == {"lr": "1e-4"}  # YAML 1.1 reads it as text ...
    assert build(None, parse_overrides(["lr=1e-4", "adam_eps=1E-6"])).lr == 1e-4  # ... the float key reads a number
    preset = tmp_path / "p.yaml"
    preset.write_text("lr: 1e-4\nweight_decay: 5e-3\n")
    cfg = build(str(preset))
    assert (cfg.lr, cfg.weight_decay) == (1e-4, 5e-3)
    with pytest.raises(NpoError, match="'lr' must be a number, got 'fast'"):
        build(None, {"lr": "fast"})


def test_text_keys_keep_their_text():
    out = parse_overrides(["forget=007", "retain=1e3", "template=null", "tokenizer=~", "rmu_params=a: b"])
    assert out == {"forget": "007", "retain": "1e3", "template": None, "tokenizer": None, "rmu_params": "a: b"}


def test_overrides_may_sit_between_flags(tiny, monkeypatch):
    from npo.commands import train_args

    model, data = tiny
    parser = _Parser(prog="npo unlearn")
    train_args.add(parser, unlearn=True)
    args = parser.parse_intermixed_args(["--model", str(model), "lr=1e-4", "--data", str(data), "epochs=2",
                                         "--forget", "forget10", "beta=0.3", "--out", "x"])
    cfg, resume = train_args.config_from_args(args)
    assert (cfg.lr, cfg.epochs, cfg.beta, cfg.forget, resume) == (1e-4, 2, 0.3, "forget10", False)


# ----------------------------------------------------------------------------- data


def test_data_file_with_split_names_is_refused(tiny, tmp_path, capsys):
    _, data = tiny
    model, _ = tiny
    code, err, _ = _cli(["unlearn", "--model", str(model), "--data", str(data / "forget10.json"), "--forget",
                         "forget10", "--retain", "retain90", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "forget10.json: is a file, so the split name 'forget10' cannot be looked up" in err, err


def test_symlink_loop_is_named_as_such(tiny, tmp_path, capsys):
    model, data = tiny
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    (copy / "forget10.json").unlink()
    (copy / "forget10.json").symlink_to(copy / "loop.json")
    (copy / "loop.json").symlink_to(copy / "forget10.json")
    code, err, _ = _cli(["unlearn", "--model", str(model), "--data", str(copy), "--forget", "forget10",
                         "--retain", "retain90", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "forget10.json: is a symbolic link that cannot be followed: Too many levels" in err, err


def test_json_object_files(tmp_path):
    from npo.data.qa import load_file

    one = tmp_path / "one.json"
    one.write_text(json.dumps({"question": "Q?", "answer": "A."}, indent=2))
    assert [r.answer for r in load_file(one)] == ["A."]  # one record, as on one line
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"data": [{"question": "Q?", "answer": "A."}]}, indent=2))
    with pytest.raises(NpoError, match=r"other.json: is one JSON object \(keys: data\), not QA records"):
        load_file(other)


# ----------------------------------------------------------------------------- models and checkpoints


def test_missing_tokenizer_message_is_whole(tiny, tmp_path, capsys):
    model, _ = tiny
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(model / name, bare / name)
    code, err, _ = _cli(["unlearn", "--model", str(bare), "--forget", "x.json", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and err.endswith("pass the tokenizer's directory as tokenizer=DIR") and "none of tokenizer.json" in err


def test_library_messages_are_kept_whole_on_one_line():
    from npo.modeling import _one_line

    err = ValueError("Couldn't instantiate the backend tokenizer from one of: \n(1) a file, \n(2) a slow one")
    assert _one_line(err) == "Couldn't instantiate the backend tokenizer from one of: (1) a file, (2) a slow one"


@pytest.fixture(scope="module")
def pickled(tiny, tmp_path_factory):
    model, _ = tiny
    out = tmp_path_factory.mktemp("pickled") / "model"
    shutil.copytree(model, out)
    (out / "model.safetensors").unlink()
    torch.save({"x": torch.zeros(1)}, out / "pytorch_model.bin")
    return out


def test_pickle_refusal_names_the_option_of_the_command(tiny, pickled, tmp_path, capsys):
    _, data = tiny
    code, err, _ = _cli(["eval", "--model", str(pickled), "--data", str(data), "--forget-split", "forget10",
                         "--out", str(tmp_path / "e")], capsys)
    assert code == 2 and "pass --allow-pickle if you trust" in err and "allow_pickle=true" not in err, err
    code, err, _ = _cli(_unlearn((pickled, data), tmp_path / "u"), capsys)
    assert code == 2 and "pass allow_pickle=true if you trust" in err, err
    assert not (tmp_path / "u").exists() and not (tmp_path / "e").exists()


def test_pickle_with_code_is_refused_in_one_line(tiny, pickled, tmp_path, capsys):
    _, data = tiny
    evil = tmp_path / "evil"
    shutil.copytree(pickled, evil)
    (evil / "pytorch_model.bin").write_bytes(b"\x80\x04cos\nsystem\n(S'true'\ntR.")  # os.system('true')
    code, err, _ = _cli(["eval", "--model", str(evil), "--data", str(data), "--forget-split", "forget10",
                         "--allow-pickle", "--out", str(tmp_path / "e")], capsys)
    assert code == 2 and "torch refuses to load (weights_only=True)" in err, err


def test_truncated_weights_in_eval_are_one_line(tiny, tmp_path, capsys):
    model, data = tiny
    broken = tmp_path / "broken"
    shutil.copytree(model, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    code, err, _ = _cli(["eval", "--model", str(broken), "--data", str(data), "--forget-split", "forget10",
                         "--out", str(tmp_path / "e")], capsys)
    assert code == 2 and "truncated or corrupted" in err, err


@pytest.fixture(scope="module")
def crashed(tiny, tmp_path_factory):
    """A run whose checkpoint (step 2) is on disk and which never finished."""
    model, data = tiny
    run = tmp_path_factory.mktemp("crashed") / "run"
    import npo

    npo.unlearn(build(None, {"model": str(model), "data": str(data), "forget": "forget10", "retain": "retain90",
                             "template": "qa", "batch_size": 4, "epochs": 2, "save_every_steps": 2,
                             "out": str(run), "max_steps": 3}))
    (run / "done.json").unlink()
    return run


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _pickle_with_code(path):
    path.write_bytes(b"\x80\x04cos\nsystem\n(S'true'\ntR.")


@pytest.mark.parametrize("name, damage, words", [
    ("trainable.safetensors", _truncate, "trainable.safetensors is truncated or corrupted"),
    ("reference.safetensors", _truncate, "reference.safetensors is truncated or corrupted"),
    ("optimizer.pt", _truncate, "optimizer.pt is truncated or corrupted"),
    ("state.json", _truncate, "state.json is truncated or corrupted"),
    ("optimizer.pt", _pickle_with_code, "optimizer.pt holds objects other than tensors"),
    ("state.json", lambda p: p.unlink(), "is incomplete (no state.json)"),
])
def test_damaged_checkpoint_is_one_line(crashed, tmp_path, capsys, name, damage, words):
    run = tmp_path / "run"
    shutil.copytree(crashed, run)
    damage(run / "checkpoint" / name)
    code, err, _ = _cli(["unlearn", "--resume", str(run)], capsys)
    assert code == 2 and words in err, err


# ----------------------------------------------------------------------------- npo eval


def test_eval_output_path_that_is_a_file_fails_before_anything_loads(tiny, tmp_path, capsys):
    _, data = tiny
    target = tmp_path / "summary"
    target.write_text("x")
    # a model that does not exist: the --out check must come first
    code, err, _ = _cli(["eval", "--model", str(tmp_path / "none"), "--data", str(data), "--forget-split",
                         "forget10", "--out", str(target)], capsys)
    assert code == 2 and f"--out {target} exists and is not a directory" in err, err


def test_eval_hint_names_legacy300_only_when_it_was_not_given(tmp_path):
    from npo.eval.logs import write_log
    from npo.eval.tofu import load_retain_logs

    n = 300
    write_log({"avg_gt_loss": [1.0] * n, "avg_paraphrased_loss": [1.0] * n, "average_perturb_loss": [[1.0]] * n,
               "rougeL_recall": [0.5] * n}, tmp_path / "eval_log_forget.json")
    with pytest.raises(NpoError, match="use --protocol legacy300"):
        load_retain_logs(str(tmp_path), "full", n_forget=400)
    with pytest.raises(NpoError) as err:
        load_retain_logs(str(tmp_path), "legacy300", n_forget=40)
    assert "use --protocol" not in str(err.value)


def test_eval_options_all_have_help():
    from npo.commands import evaluate

    parser = _Parser(prog="npo eval")
    evaluate.add_arguments(parser)
    assert all(a.help for a in parser._actions), [a.dest for a in parser._actions if not a.help]
    text = parser.format_help()
    assert "--batch-size N prompts scored or generated at once (default: 64;" in " ".join(text.split())


# ----------------------------------------------------------------------------- npo metrics


def _logs(tmp_path, **bad):
    from npo.eval.logs import write_log_dir

    good = {"avg_gt_loss": [0.5, 1.0], "avg_paraphrased_loss": [0.5, 1.0], "average_perturb_loss": [[1.0], [2.0]],
            "rougeL_recall": [0.5, 1.0]}
    logs = {s: dict(good) for s in ("retain", "real_authors", "world_facts", "forget")}
    logs["forget"].update(bad)
    write_log_dir(logs, tmp_path)
    return tmp_path


@pytest.mark.parametrize("bad, words", [
    ({"avg_gt_loss": [0.5, float("nan")]}, "key 'avg_gt_loss', item 1: NaN is not a loss"),
    ({"avg_gt_loss": [-5.0, 1.0]}, "key 'avg_gt_loss', item 0: a loss (negative log-likelihood) cannot be negative"),
    ({"average_perturb_loss": [[1.0], [-2.0]]}, "key 'average_perturb_loss', item 1: a loss"),
    ({"rougeL_recall": [float("nan"), 1.0]}, "key 'rougeL_recall', item 0: NaN is not a recall"),
])
def test_metrics_refuse_impossible_values(tmp_path, capsys, bad, words):
    code, err, out = _cli(["metrics", str(_logs(tmp_path, **bad))], capsys)
    assert code == 2 and words in err and "eval_log_forget.json" in err and out == "", err


def test_metrics_accept_rounding_below_zero_and_infinite_losses(tmp_path, capsys):
    from npo.eval.metrics import probability

    code, _, out = _cli(["metrics", "--json", str(_logs(tmp_path, avg_gt_loss=[-1e-7, math.inf]))], capsys)
    assert code == 0
    # p = exp(1e-7) ~ 1 and exp(-inf) = 0: mean 0.5, not a "probability" above 1
    assert json.loads(out)["forget_prob"] == pytest.approx(probability([-1e-7, math.inf])) == pytest.approx(0.5)


# ----------------------------------------------------------------------------- help


def test_every_config_key_has_help():
    fields = dataclasses.fields(TrainConfig)
    assert [f.name for f in fields if not f.metadata.get("help", "").strip()] == []
    assert len(key_help()) == len(fields)


def test_npo_config_lists_every_key_with_type_default_and_help(capsys):
    code, _, out = _cli(["config"], capsys)
    assert code == 0
    rows = {line.split()[0]: line for line in out.splitlines()[1:] if line and not line.startswith("Set any")}
    assert set(rows) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert rows["lr"].split()[:3] == ["lr", "float", "1e-05"] and "peak learning rate" in rows["lr"]
    assert "[stop|skip]" in rows["nonfinite"] and rows["lora_target_modules"].split()[1:5] == ["list", "of", "str", "or"]
    assert main(["unlearn", "--help-config"]) == 0
    assert capsys.readouterr().out == out


def test_npo_config_shows_a_presets_values(tmp_path, capsys):
    preset = tmp_path / "p.yaml"
    preset.write_text("lr: 2e-5\n")
    code, _, out = _cli(["config", "--config", str(preset), "epochs=3"], capsys)
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:] if line.strip()}
    assert code == 0 and rows["lr"][2] == "2e-05*" and rows["epochs"][2] == "3*" and rows["beta"][2] == "0.1"


@pytest.mark.parametrize("command", ["unlearn", "finetune", "sequence"])
def test_training_help_has_real_placeholders_and_defaults(capsys, command):
    assert main([command, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "FLAG_" not in text
    assert "--lr LR peak learning rate of AdamW" in text
    if command != "sequence":
        assert "(default: 1e-05)" in text and "--help-config" in text


def test_version(capsys):
    from npo import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"npo {__version__}"


def test_sigterm_outside_training_is_one_line(tmp_path, capsys, monkeypatch):
    import signal

    from npo.commands import metrics

    monkeypatch.setattr(metrics, "main", lambda args: os.kill(os.getpid(), signal.SIGTERM))
    code, err, _ = _cli(["metrics", str(tmp_path)], capsys)
    assert code == 143 and err == "npo metrics: stopped by SIGTERM"
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_bad_rows_still_name_file_row_and_field(tiny, tmp_path, capsys):
    model, _ = tiny
    forget = write_jsonl(tmp_path / "f.jsonl", qa_rows(2) + [{"question": "Q?"}])
    code, err, _ = _cli(["unlearn", "--model", str(model), "--forget", str(forget), "--retain", str(forget),
                         "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "f.jsonl, row 3, field 'answer': missing required field" in err


def test_errors_keep_their_message_across_processes():
    """The demo's workers raise NpoErrors in other processes: they must unpickle, message and fields kept."""
    import pickle

    from npo.errors import DataError, Stopped

    e = pickle.loads(pickle.dumps(DataError("f.json", "bad value", row=3, field="answer")))
    assert isinstance(e, DataError) and str(e) == "f.json, row 3, field 'answer': bad value" and e.row == 3
    s = pickle.loads(pickle.dumps(Stopped("stopped at step 2", 143)))
    assert isinstance(s, Stopped) and s.code == 143 and str(s) == "stopped at step 2"
