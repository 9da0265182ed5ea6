"""One registry shape for every extension point: register_X(name, **metadata), list_X(pattern), get_X(name)."""
from __future__ import annotations

import pytest

from benchmark.errors import UsageError
from benchmark.registry import Registry


def test_register_list_get_and_metadata():
    things = Registry("thing")

    @things.register("pgd20", iterative=True)
    def pgd20():
        return 20

    things.register("fgsm", lambda: 1, iterative=False)
    assert things.list() == ["fgsm", "pgd20"]
    assert things.list("pgd*") == ["pgd20"] and things.list("*x*") == []
    assert things.get("pgd20") is pgd20 and things.metadata("pgd20") == {"iterative": True}
    assert things.where(iterative=False) == ["fgsm"]
    assert "fgsm" in things and len(things) == 2 and list(things) == ["fgsm", "pgd20"]
    assert dict(things.entries()) == {"fgsm": things.get("fgsm"), "pgd20": pgd20}


def test_unknown_name_lists_the_known_ones_and_suggests_a_close_one():
    things = Registry("thing")
    things.register("trades", object())
    things.register("mart", object())
    with pytest.raises(UsageError, match=r"^unknown thing 'tades'; known things: mart, trades; did you mean 'trades'\?$"):
        things.get("tades")
    with pytest.raises(UsageError, match=r"^unknown thing 'nope'; known things: mart, trades$"):
        things.get("nope")


def test_a_second_registration_of_a_name_fails_and_keeps_the_first():
    things = Registry("thing")
    first = things.register("a", object())
    with pytest.raises(ValueError, match="already registered"):
        things.register("a", object())
    assert things.get("a") is first


# The four registries of the harness share the shape: a pattern lists, an unknown name fails the same way.

def _registries():
    from attacks import get_attack, list_attacks
    from benchmark.data import get_dataset, list_datasets
    from benchmark.models import get_model, list_models
    from methods import get_method, list_methods
    return {"method": (list_methods, get_method, "at*", "at"), "model": (list_models, get_model, "resnet*", "resnet18"),
            "attack kind": (list_attacks, get_attack, "*autoattack", "autoattack"),
            "dataset": (list_datasets, get_dataset, "*mnist*", "mnist")}


@pytest.mark.parametrize("what", ["method", "model", "attack kind", "dataset"])
def test_every_registry_has_the_same_shape(what):
    list_x, get_x, pattern, example = _registries()[what]
    names = list_x()
    assert names == sorted(names) and example in names
    assert list_x(pattern) and all(n in names for n in list_x(pattern)) and example in list_x(pattern)
    assert get_x(example) is not None
    with pytest.raises(UsageError, match=rf"^unknown {what} 'nope'; known {what}s: "):
        get_x("nope")
    with pytest.raises(UsageError, match=rf"did you mean '{example}'\?$"):
        get_x(example + "x")
