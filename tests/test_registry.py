import pytest

from icm.errors import UserError
from icm.registry import Registry


def test_register_and_decorator():
    reg = Registry("codec")
    reg.register("a", 1, plugin="p")

    @reg.register("b", plugin="q")
    def b():
        return 2

    assert reg.get("a") == 1 and reg.get("b") is b
    assert reg.names() == ["a", "b"] and reg.by_plugin("q") == ["b"]


def test_duplicate_name_is_an_error_naming_the_owner():
    reg = Registry("codec")
    reg.register("jpeg", 1, plugin="first")
    with pytest.raises(ValueError, match="already registered.*first"):
        reg.register("jpeg", 2, plugin="second")
    assert reg.get("jpeg") == 1


def test_unknown_name_suggests_close_matches():
    reg = Registry("codec")
    reg.register("bmshj2018-hyperprior", 1)
    with pytest.raises(UserError, match="did you mean bmshj2018-hyperprior"):
        reg.get("bmshj2018-hyperpior")
