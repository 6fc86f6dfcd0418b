import pytest

from benchbd import attacks, defenses, detectors, models  # noqa: F401
from benchbd.data import DATASETS
from benchbd.errors import BenchbdError
from benchbd.registry import Registry
from benchbd.train import BUDGETS


def test_register_alias_and_did_you_mean():
    reg = Registry("widget")

    @reg.register("alpha_beta", aliases=("ab",))
    class AlphaBeta:
        """Makes alpha into beta."""

    assert reg.get("ab") is AlphaBeta
    assert reg.resolve("ab") == "alpha_beta"
    assert reg.entry("alpha_beta").description == "Makes alpha into beta."
    with pytest.raises(BenchbdError, match=r"unknown widget 'alpha_betta' \(did you mean 'alpha_beta'\?\); valid: ab, alpha_beta"):
        reg.get("alpha_betta")


def test_duplicate_name_is_refused():
    reg = Registry("widget")
    reg.register("x")(type("X", (), {}))
    with pytest.raises(BenchbdError, match="already registered"):
        reg.register("y", aliases=("x",))(type("Y", (), {}))


def test_expand_all_and_order():
    reg = Registry("widget")
    for name in ("c", "a", "b"):
        reg.register(name)(type(name, (), {}))
    assert reg.expand("all") == ["a", "b", "c"]
    assert reg.expand("b, a,b") == ["b", "a"]
    groups = {"all": ["a"], "pair": ["c", "b"]}
    assert reg.expand("all", groups) == ["a"] and reg.expand("pair,all,b", groups) == ["c", "b", "a"]
    with pytest.raises(BenchbdError, match="unknown widget 'd'"):
        reg.expand("a,d")
    with pytest.raises(BenchbdError, match=r"unknown widget 'pairs' \(did you mean 'pair'\?\); valid: a, all, b, c, pair"):
        reg.expand("pairs", groups)


@pytest.mark.parametrize(
    "registry", [attacks.ATTACKS, defenses.DEFENSES, detectors.DETECTORS, models.MODELS, DATASETS, BUDGETS], ids=lambda r: r.kind
)
def test_every_registered_name_has_a_description(registry):
    assert registry.names()
    for entry in registry.entries():
        assert entry.description, f"{registry.kind} {entry.name} has no description"


def test_every_method_has_a_fidelity_card_naming_tests_that_exist():
    """benchbd/fidelity.yaml: one card per built-in attack and defense, each check a test of this suite,
    docs/fidelity.md generated from the cards and the committed rows, and `show` prints the card."""
    import re

    from click.testing import CliRunner

    from benchbd.attacks import ATTACKS
    from benchbd.cli import main
    from benchbd.defenses import DEFENSES
    from benchbd.detectors import DETECTORS
    from benchbd.fidelity import cards, document

    from .conftest import REPO

    built_in = {
        kind: {e.name for e in registry.entries() if e.module.startswith("benchbd.")}
        for kind, registry in (("attacks", ATTACKS), ("defenses", DEFENSES), ("detectors", DETECTORS))
    }
    assert {kind: set(methods) for kind, methods in cards().items()} == built_in
    tests = {m for f in (REPO / "tests").glob("test_*.py") for m in re.findall(r"^def (test_\w+)", f.read_text(), re.M)}
    named = {check.split("[")[0] for methods in cards().values() for card in methods.values() for check in card["checks"]}
    assert named <= tests, sorted(named - tests)
    assert (REPO / "docs" / "fidelity.md").read_text() == document(REPO / "results"), "run `python -m benchbd.fidelity`"
    res = CliRunner().invoke(main, ["show", "defense", "bti"], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "fidelity: official xuxiong0214/BTIDBF@e680dda" in res.output
    res = CliRunner().invoke(main, ["show", "detector", "teco"], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "fidelity: official CGCL-codes/TeCo@4eacfaf" in res.output


def test_fidelity_cards_quote_a_methods_own_rows_not_an_ablations_variant():
    """Table 4's `no reconstruction` column is T&R with rec_weight 0: not T&R's own real-data row."""
    from benchbd.config import Layers, as_dict
    from benchbd.defenses import DEFENSES
    from benchbd.fidelity import _default_settings

    own = as_dict(Layers().params("defense", "tnr", "cifar10", DEFENSES.get("tnr").Params))
    row = {"defense": "tnr", "dataset": "cifar10", "params": {"defense": own}}
    assert _default_settings(row)
    assert not _default_settings({**row, "params": {"defense": {**own, "rec_weight": 0.0}}})
    older = {k: v for k, v in own.items() if k != "cutmix"}  # a parameter added after the row ran
    assert _default_settings({**row, "params": {"defense": older}})
