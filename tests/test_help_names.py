"""Help texts and names a newcomer meets first (issue 24, item 8): train covers 2D models, the
extractor list names domain features, a mistyped config key suggests the right one."""

from __future__ import annotations

import pytest

from medvol import cli
from medvol.config import load_config
from medvol.errors import MedvolError


def _help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit):
        cli.main([*argv, "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_train_help_names_2d_models_and_config_names(capsys):
    text = _help(capsys, "train")
    assert "3D or 2D" in text and "dcgan" in text and "stylegan2" in text
    assert "medvol configs" in text and "--threads" in text


def test_evaluate_help_names_domain_features(capsys):
    text = _help(capsys, "evaluate")
    assert "domain:FILE" in text and "medvol features train" in text


@pytest.mark.parametrize("override, key, suggestion", [
    (["--train.iteration", "3"], "train.iteration", "train.iterations"),
    (["--trian.iterations", "3"], "trian", "train"),
    (["--data.bach", "2"], "data.bach", "data.batch"),
])
def test_mistyped_override_suggests_the_key(override, key, suggestion):
    with pytest.raises(MedvolError) as info:
        load_config(None, override)
    message = str(info.value)
    assert f"unknown config key {key!r}; did you mean {suggestion}?" in message and "\n" not in message


def test_mistyped_key_in_a_file_suggests_and_unrelated_does_not(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {name: crfgan, size: 32, latent_dims: 8}\n", encoding="utf-8")
    with pytest.raises(MedvolError, match=r"'model\.latent_dims'; did you mean model\.latent_dim\?"):
        load_config(path)
    with pytest.raises(MedvolError) as info:
        load_config(None, ["--model.zzz", "1"])
    assert "did you mean" not in str(info.value)
