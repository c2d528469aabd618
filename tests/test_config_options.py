"""Model options (issue 25): one options dataclass per registry entry; the older flat spelling
``model.<key>`` of configs and checkpoints builds exactly what ``model.options`` builds; the CLI's
help and checks read the registry, so a new entry needs no list edited anywhere."""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

import pytest
import torch

from medvol import cli
from medvol.config import LEGACY_FLAT_DEFAULTS, ModelConfig, config_from_dict, config_to_dict, load_config
from medvol.errors import MedvolError
from medvol.models import REGISTRY, build, build_from_config
from medvol.models.contract import GenerativeSystem

ROOT = Path(__file__).resolve().parents[1]
LEGACY = ROOT / "tests" / "models" / "legacy"
TINY = {3: dict(size=32, base_width=2, latent_dim=8), 2: dict(size=32, base_width=4, latent_dim=8)}
#: Options away from their defaults, one set per model that had flat keys: each changes the
#: network or its step, so a key folded into the wrong option (or lost) changes what is built.
CHANGED = {
    "hagan": {"crop_depth": 8, "d_minibatch_std": True},
    "crfgan": {"crf_forwards": "reuse", "crf_layout": "depth", "crf_self_pairs": False, "crop_depth": 8,
               "d_minibatch_std": True},
    "dcgan": {"loss": "hinge", "norm": "instance", "g_activation": "elu", "spectral_norm_d": True, "init": "xavier",
              "init_gain": 0.1, "g_base_width": 6, "d_base_width": 2, "fm_weight": 1.0, "diffaugment": "translation",
              "n_critic": 2, "optimizer": "rmsprop"},
    "mlpgan": {"channels": 2},
    "stylegan2": {"mapping_layers": 2, "r1_gamma": 0.5, "r1_interval": 4, "truncation": 0.7, "ema_kimg": 0.02},
    "fastgan": {"recon_loss": "mse", "recon_weight": 2.0, "diffaugment": "color"},
    "spade": {"channels": 2, "norm": "instance", "d_scales": 1, "fm_l1_weight": 5.0},
    "pix2pix": {"channels": 2, "loss": "lsgan", "l1_weight": 50.0, "patch": 22},
}


def _common(name: str) -> dict:
    return {"name": name, **TINY[REGISTRY[name].dims]}


def _generate(system, seed: int = 3) -> torch.Tensor:
    z = system.sample_latent(2, torch.Generator().manual_seed(seed))
    masks = {}
    if system.conditional:
        masks["masks"] = torch.where(torch.rand(2, 1, system.size, system.size,
                                                generator=torch.Generator().manual_seed(seed)) > 0.5, 1.0, -1.0)
    torch.manual_seed(0)
    return system.generate(z, **masks)


# ---------------------------------------------------------------------------------- one source
def test_every_model_with_flat_keys_is_covered():
    """The models whose options were all flat keys of older configs are all tested below."""
    flat_era = {name for name, s in REGISTRY.items() if s.option_defaults()
                and set(s.option_defaults()) <= set(LEGACY_FLAT_DEFAULTS)}
    assert flat_era == set(CHANGED)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_options_dataclass_is_the_one_source(name):
    """Its defaults are what the constructor would use, and no option shadows a common field."""
    spec = REGISTRY[name]
    defaults = spec.option_defaults()
    assert not set(defaults) & {f.name for f in dataclasses.fields(ModelConfig)}
    parameters = inspect.signature(spec.system.__init__).parameters
    for key, default in defaults.items():
        if key in parameters:  # a constructor taking **options builds the dataclass itself
            assert parameters[key].default == default, key
    with torch.device("meta"):
        system = build(name, min(spec.sizes), **({"channels": 2} if spec.system.conditional else {}))
    assert set(system.options()) <= set(defaults)


def test_registry_takes_only_options_dataclasses():
    with pytest.raises(TypeError, match="options dataclass"):
        dataclasses.replace(REGISTRY["dcgan"], name="flatgan", options={"loss": "bce"})


def test_the_contract_is_abstract():
    with pytest.raises(TypeError, match="generate"):
        GenerativeSystem(32, 4, 8)

    class NoGenerate(type(build("dcgan", 32, base_width=4, latent_dim=8))):
        generate = GenerativeSystem.generate

    with pytest.raises(TypeError, match="abstract method.*generate"):
        NoGenerate(32, base_width=4, latent_dim=8)


# ---------------------------------------------------------------------------------- flat == options
@pytest.mark.parametrize("name", list(CHANGED))
def test_flat_config_builds_what_options_build(name):
    """An older config (every flat key, as checkpoints saved them, the model's own changed) and
    the same options under model.options resolve to one config and build the same network."""
    flat = config_from_dict({"model": {**_common(name), **LEGACY_FLAT_DEFAULTS, **CHANGED[name]}})
    nested = config_from_dict({"model": {**_common(name), "options": CHANGED[name]}})
    assert flat == nested
    assert config_to_dict(flat)["model"]["options"] == {**REGISTRY[name].option_defaults(), **CHANGED[name]}
    systems = []
    for cfg in (flat, nested):
        torch.manual_seed(0)
        systems.append(build_from_config(cfg.model))
    torch.manual_seed(0)
    direct = build(name, **{k: v for k, v in _common(name).items() if k != "name"}, **CHANGED[name])
    published = build(name, **{k: v for k, v in _common(name).items() if k != "name"},
                      **({"channels": 2} if direct.conditional else {}))
    for system in systems:
        assert system.options() == direct.options() != published.options()
        state, expected = system.state_dict(), direct.state_dict()
        assert state.keys() == expected.keys()
        assert all(torch.equal(state[k], expected[k]) for k in expected)
        torch.testing.assert_close(_generate(system), _generate(direct), rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(p.name for p in LEGACY.iterdir()))
def test_legacy_checkpoint_equals_its_options_spelling(name):
    """A checkpoint written with flat keys, and its config rewritten under model.options, build
    one model that generates what the checkpoint generated when it was written."""
    from medvol.train.checkpoint import load_checkpoint, load_system_state

    system, cfg, state = load_checkpoint(LEGACY / name / "ckpt_0000001.pt")
    saved = state["config"]
    assert set(saved["model"]) & set(LEGACY_FLAT_DEFAULTS) and "options" not in saved["model"]
    own = REGISTRY[name].option_defaults()
    rewritten = {**saved, "model": {k: v for k, v in saved["model"].items() if k not in LEGACY_FLAT_DEFAULTS}}
    rewritten["model"]["options"] = {k: v for k, v in saved["model"].items() if k in own}
    again = config_from_dict(rewritten)
    assert again == cfg
    other = build_from_config(again.model)
    load_system_state(other, state)
    expected = torch.load(LEGACY / name / "expected.pt", weights_only=True)
    kwargs = {"masks": expected["masks"]} if expected["masks"] is not None else {}
    for model in (system, other):
        torch.manual_seed(0)
        torch.testing.assert_close(model.generate(expected["z"], **kwargs), expected["generated"], rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------- spellings
def test_both_spellings_override_and_the_later_wins():
    base = ["--model.name", "crfgan", "--model.size", "32"]
    a = load_config(None, [*base, "--model.crf_layout", "depth"])
    b = load_config(None, [*base, "--model.options.crf_layout", "depth"])
    assert a == b and a.model.options["crf_layout"] == "depth" and a.model.crf_layout == "depth"
    assert load_config(None, [*base, "--model.crf_layout", "depth", "--model.options.crf_layout",
                              "channels"]).model.options["crf_layout"] == "channels"
    assert load_config(None, [*base, "--model.options.crf_layout", "channels", "--model.crf_layout",
                              "depth"]).model.options["crf_layout"] == "depth"


def test_a_file_with_both_spellings_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {name: dcgan, size: 32, loss: hinge, options: {loss: bce}}\n", encoding="utf-8")
    with pytest.raises(MedvolError, match=r"model\.loss: given twice"):
        load_config(path)
    # An override of one spelling replaces the other.
    assert load_config(path, ["--model.options.loss", "lsgan"]).model.options["loss"] == "lsgan"


@pytest.mark.parametrize("overrides, message", [
    (["--model.loss", "hinge"], "model.loss: only for dcgan and pix2pix, not crfgan"),
    (["--model.options.loss", "hinge"], "model.options.loss: only for dcgan and pix2pix, not crfgan"),
    (["--model.options.loss", "bce"], "model.options.loss: only for dcgan and pix2pix, not crfgan"),
    (["--model.channels", "true"], "model.channels: only for"),  # true is not the old default 1
    (["--model.crf_iters", "3"], "unknown config key 'model.crf_iters'"),
    (["--model.crf_layot", "depth"], "did you mean model.crf_layout?"),
    (["--model.options.crf_layot", "depth"], "did you mean model.options.crf_layout?"),
    (["--model.crf_layout", "rows"], "config key model.crf_layout: 'rows' is not one of channels, depth"),
    (["--model.options.crf_layout", "rows"], "config key model.options.crf_layout: 'rows' is not one"),
    (["--model.name", "dcgan", "--model.n_critic", "0"], "config key model.n_critic: must be positive, got 0"),
    (["--model.name", "dcgan", "--model.options.n_critic", "0"], "config key model.options.n_critic: must be positive"),
    (["--model.name", "dcgan", "--model.label_smoothing", "1"], "config key model.label_smoothing: must be below 1"),
    (["--model.name", "pix2pix", "--model.patch", "30"], "config key model.patch: 30 is not one of 10, 22, 46"),
])
def test_option_errors_are_one_line_and_name_the_spelling(overrides, message):
    with pytest.raises(MedvolError) as info:
        load_config(None, ["--model.name", "crfgan", "--model.size", "32", *overrides])
    assert message in str(info.value) and "\n" not in str(info.value)


def test_older_keys_of_other_models_at_their_defaults_are_dropped():
    cfg = config_from_dict({"model": {"name": "crfgan", "size": 32, "loss": "bce", "channels": 1, "fm_weight": 0}})
    assert "loss" not in cfg.model.options and "channels" not in cfg.model.options
    with pytest.raises(AttributeError):
        cfg.model.loss
    with pytest.raises(AttributeError, match=r"model\.options\['crf_layout'\]"):
        cfg.model.crf_layout = "depth"


def test_any_model_takes_its_options_flat():
    """Not only the keys of older configs: the flat spelling works for every model's options."""
    cfg = load_config(None, ["--model.name", "ldm", "--model.size", "32", "--model.levels", "2"])
    assert cfg.model.options["levels"] == 2


def test_saved_config_round_trips(tmp_path):
    from medvol.config import save_config

    cfg = load_config(None, ["--model.name", "dcgan", "--model.size", "32", "--model.loss", "hinge"])
    path = save_config(cfg, tmp_path / "c.yaml")
    assert load_config(path) == cfg


# ---------------------------------------------------------------------------------- the registry
@pytest.fixture
def extra_model(monkeypatch):
    """A registry entry added at run time: what every list must show without being edited."""
    monkeypatch.setitem(REGISTRY, "zzgan", dataclasses.replace(REGISTRY["dcgan"], name="zzgan", sizes=(32,)))
    return "zzgan"


@pytest.mark.parametrize("command", ["train", "info", "profile"])
def test_help_lists_a_new_registry_entry(command, extra_model, capsys):
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert extra_model in text
    assert all(re.search(rf"\b{name}\b", text) for name in REGISTRY)


def test_config_profile_and_info_accept_a_new_registry_entry(extra_model, capsys):
    from medvol.commands.profile import _check_model_options, _sizes
    from medvol.profile.cases import model_names

    cfg = load_config(None, ["--model.name", extra_model, "--model.size", "32", "--model.loss", "hinge"])
    assert cfg.model.options["loss"] == "hinge"
    assert extra_model in model_names()
    assert _sizes("32", [extra_model], custom=False) == [32]
    _check_model_options([extra_model], {"loss": "hinge"})
    assert cli.main(["info", "--model", extra_model, "--size", "32", "--base-width", "4", "--latent-dim", "8"]) == 0
    assert "total" in capsys.readouterr().out


def test_no_hand_written_model_list_in_the_package():
    """Three or more registry names in a row in medvol/ is a list to be read from the registry."""
    name = "(?:" + "|".join(sorted(REGISTRY, key=len, reverse=True)) + ")"
    listed = re.compile(rf"\b{name}\b(?:[\s,/\"'`()]+(?:and\s+|or\s+)?\b{name}\b){{2,}}")
    found = [f"{path.relative_to(ROOT)}:{i}: {match.group(0)}"
             for path in sorted((ROOT / "medvol").rglob("*.py"))
             for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             for match in listed.finditer(line)]
    assert not found, found


@pytest.mark.parametrize("name", ["crfgan", "dcgan"])
def test_a_run_written_with_flat_keys_resumes_without_changes(tmp_path, name):
    """Resume compares through the loader: an older run's flat config equals the same settings
    written under model.options, and a changed option is still named."""
    from medvol.train.checkpoint import read_checkpoint
    from medvol.train.history import check_resume

    state = read_checkpoint(LEGACY / name / "ckpt_0000001.pt")
    saved = state["config"]
    own = REGISTRY[name].option_defaults()
    rewritten = {**saved, "model": {k: v for k, v in saved["model"].items() if k not in LEGACY_FLAT_DEFAULTS}}
    rewritten["model"]["options"] = {k: v for k, v in saved["model"].items() if k in own}
    cfg = config_from_dict(rewritten)
    assert check_resume(state, cfg, tmp_path, auto=True, allow_changes=False) == {}
    key, value = ("crf_layout", "depth") if name == "crfgan" else ("loss", "hinge")
    changed = config_from_dict(rewritten, [f"--model.{key}", value])
    with pytest.raises(MedvolError, match=rf"\(options\.{key} \S+ vs {value}\)$"):
        check_resume(state, changed, tmp_path, auto=True, allow_changes=False)


def test_sweep_report_reads_either_spelling():
    """A grid or base config may name an option model.loss or model.options.loss: the report
    groups by the loss and finds D's filters (the study's Fig. 4) the same way."""
    from medvol.sweep.report import d_filters_series, group_of

    def run(i, score, **values):
        return {"id": f"run_{i:03d}", "status": "evaluated", "values": values,
                "score": {"name": "image/fid", "value": score, "direction": "lower"}}

    flat = [run(0, 5.0, **{"model.loss": "bce", "model.d_base_width": 16}), run(1, 4.0, **{"model.loss": "hinge"})]
    nested = [run(0, 5.0, **{"model.options.loss": "bce", "model.options.d_base_width": 16}),
              run(1, 4.0, **{"model.options.loss": "hinge"})]
    assert [group_of(r, "all") for r in nested] == [group_of(r, "all") for r in flat] == ["bce", "hinge"]
    expected = {"bce": [(16, 5.0)], "hinge": [(32, 4.0)]}
    assert d_filters_series({"runs": flat}, {"base_width": 8, "d_base_width": 32}, "all") == expected
    assert d_filters_series({"runs": nested}, {"base_width": 8, "options": {"d_base_width": 32}}, "all") == expected
