from dataclasses import dataclass, field

import pytest

from benchbd.attacks import ATTACKS
from benchbd.config import Layers, build_params, parse_set
from benchbd.errors import BenchbdError
from benchbd.train import TrainRecipe


def test_layers_in_order_package_dataset_user_cli():
    package = {"attack": {"_all": {"target": 0, "per_dataset": {"gtsrb": {"target": 1}}}, "blend": {"alpha": 0.2}}}
    user = {"attack": {"blend": {"alpha": 0.3, "per_dataset": {"gtsrb": {"alpha": 0.4}}}}}
    layers = Layers(package=package, user=user, cli={})
    assert layers.resolve("attack", "blend", "cifar10") == {"target": 0, "alpha": 0.3}
    assert layers.resolve("attack", "blend", "gtsrb") == {"target": 1, "alpha": 0.4}
    layers.cli = parse_set(["attack.blend.alpha=0.5", "attack.target=3", "attack.badnet_grid.target=7"])
    assert layers.resolve("attack", "blend", "gtsrb") == {"target": 3, "alpha": 0.5}
    assert layers.resolve("attack", "badnet_grid", "gtsrb") == {"target": 7}


def test_package_defaults_follow_the_spec():
    layers = Layers()
    assert layers.resolve("attack", "badnet_grid", "cifar10") == {"poison_ratio": 0.1, "target": 0}
    assert layers.resolve("attack", "badnet_grid", "gtsrb")["target"] == 1
    assert layers.resolve("dataset", "imagenet12", "imagenet12")["holdout_fraction"] == 0.1
    tnr = layers.resolve("defense", "tnr", "cifar10")
    assert (tnr["rec_weight"], tnr["tv_weight"], tnr["stage2"]["lr"], tnr["stage2"]["batch_size"]) == (10, 1, 0.03, 64)


def test_nested_set_reaches_a_recipe_field():
    layers = Layers(cli=parse_set(["defense.tnr.stage2.lr=0.01"]))
    assert layers.resolve("defense", "tnr", "cifar10")["stage2"]["lr"] == 0.01
    assert layers.resolve("defense", "tnr", "cifar10")["stage2"]["epochs"] == 100


@pytest.mark.parametrize("bad", ["attack.blend.alpha", "blend.alpha=1", "attack..alpha=1", "=3", "model.x=1"])
def test_malformed_set_is_one_line(bad):
    with pytest.raises(BenchbdError, match="malformed --set") as info:
        parse_set([bad])
    assert "\n" not in str(info.value)


def test_set_naming_an_unknown_component_suggests():
    layers = Layers(cli=parse_set(["attack.blnd.alpha=0.1"]))
    with pytest.raises(BenchbdError, match=r"unknown attack 'blnd' in --set \(did you mean 'blend'\?\)"):
        layers.check_names("attack", {n: ATTACKS.get(n).Params for n in ATTACKS.names()})


@dataclass
class Inner:
    lr: float = 0.1


@dataclass
class Outer:
    n: int = 1
    flag: bool = False
    inner: Inner = field(default_factory=Inner)
    steps: tuple[int, ...] = ()


def test_build_params_coerces_and_rejects():
    p = build_params(Outer, {"n": 3, "inner": {"lr": 1}, "steps": [1, 2]}, "x")
    assert p == Outer(3, False, Inner(1.0), (1, 2))
    with pytest.raises(BenchbdError, match=r"unknown parameter 'x.fla' \(did you mean 'flag'\?\)"):
        build_params(Outer, {"fla": True}, "x")
    with pytest.raises(BenchbdError, match="x.n=2.5 is invalid: must be an integer"):
        build_params(Outer, {"n": 2.5}, "x")
    with pytest.raises(BenchbdError, match="x.flag='yes' is invalid; valid: true, false"):
        build_params(Outer, {"flag": "yes"}, "x")


def test_recipe_validation_and_literal_choices():
    with pytest.raises(BenchbdError, match=r"train.optimizer='adamw' is invalid \(did you mean 'adam'\?\)"):
        build_params(TrainRecipe, {"optimizer": "adamw"}, "train")
    with pytest.raises(BenchbdError, match="lr=-1.0 must be positive"):
        build_params(TrainRecipe, {"lr": -1}, "train")


def test_registry_yaml_restates_the_code_defaults():
    """registry.yaml wins over the dataclass defaults; on cifar10 the two must say the same thing."""
    from benchbd.defenses import DEFENSES
    from benchbd.detectors import DETECTORS
    from benchbd.retune import RetuneParams

    layers = Layers()
    assert layers.params("train", "retune", "cifar10", RetuneParams) == RetuneParams()
    for kind, registry in (("attack", ATTACKS), ("defense", DEFENSES), ("detector", DETECTORS)):
        for name in registry.names():
            if not registry.entry(name).module.startswith("benchbd."):
                continue  # plugins registered by other tests keep their defaults in code
            cls = registry.get(name)
            assert layers.params(kind, name, "cifar10", cls.Params) == cls.Params(), f"{kind} {name}"
            assert name in layers.package[kind], f"registry.yaml has no entry for {kind} {name}"


def test_exponent_numbers_are_numbers_in_set_and_config_files(tmp_path):
    from benchbd.config import Layers, load_user_config, parse_set
    from benchbd.defenses import DEFENSES

    config = tmp_path / "my.yaml"
    config.write_text("defense:\n  ibau:\n    outer_lr: 5E-4\n")
    layers = Layers(user=load_user_config(config), cli=parse_set(["defense.ibau.inner_lr=1e-2"]))
    params = layers.params("defense", "ibau", "cifar10", DEFENSES.get("ibau").Params)
    assert params.outer_lr == 5e-4 and params.inner_lr == 0.01
    assert parse_set(["attack.blend.alpha=2e-1"])["attack"]["_set"] == [(["blend", "alpha"], 0.2)]
