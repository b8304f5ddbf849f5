"""Every preset builds, starts with the command that runs it, and every method has one."""

import re
from pathlib import Path

import pytest

from npo.config import build
from npo.errors import ConfigError
from npo.methods import METHODS

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PRESETS = sorted(p for p in CONFIGS.glob("**/*.yaml") if "accelerate" not in p.parts)


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_preset_builds_and_says_how_to_run_it(preset):
    text = preset.read_text()
    command = re.search(r"^# Run:\s+(npo \w+ --config (\S+))", text, re.M)
    assert command, f"{preset} does not start with the command that runs it"
    assert (CONFIGS.parent / command.group(2)).exists()
    cfg = build(str(preset), {"model": "m", "out": "o", "forget": "forget10", "retain": "retain90"})
    if preset.stem in METHODS:
        assert cfg.method == preset.stem


def test_every_method_has_a_tofu_preset():
    assert {m for m in METHODS if (CONFIGS / "tofu" / f"{m}.yaml").exists()} == set(METHODS)


def test_preset_base_chain_and_its_errors(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\nlr: 2.0e-5\n")
    (tmp_path / "b.yaml").write_text("lr: 1.0e-3\nepochs: 3\n")
    cfg = build(str(tmp_path / "a.yaml"), {})
    assert (cfg.lr, cfg.epochs) == (2e-5, 3)  # the preset's own value wins over its base's
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        build(str(tmp_path / "a.yaml"), {})
