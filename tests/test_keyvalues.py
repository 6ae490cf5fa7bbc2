"""The one KEY=VALUE reader: its value rules, its key rules and its errors (each with a hint)."""

from __future__ import annotations

import math

import pytest

from fbmem_data.errors import InputError
from fbmem_data.keyvalues import parse_key_values, parse_value


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("null", None),
        ("None", None),
        ("TRUE", True),
        ("false", False),
        (" true ", True),
        ("3", 3),
        ("-2", -2),
        ("+7", 7),
        ("0", 0),
        ("0.8", 0.8),
        (".5", 0.5),
        ("1e-4", 1e-4),
        ("0e3", 0.0),
        ("-inf", -math.inf),
        ("12345678901234567", 12345678901234567),  # 17 digits: a number, not an fbmem id
        ("1234567890123456", "1234567890123456"),  # 16 digits: an fbmem id, kept as text
        ("0123456789abcdef", "0123456789abcdef"),
        ("0012", "0012"),
        ("vit_b", "vit_b"),
        ("a=b", "a=b"),
        ("/path/to my/file.onnx", "/path/to my/file.onnx"),
        ("nanometre", "nanometre"),
        ("[1, 2.5]", [1, 2.5]),
        ('{"a": null}', {"a": None}),
        ('"true"', "true"),
        ('"0.8"', "0.8"),
        ('""', ""),
    ],
)
def test_value_rules(text: str, expected: object) -> None:
    value = parse_value(text)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "empty value"),
        ("  ", "empty value"),
        ("nan", "NaN"),
        ("-NaN", "NaN"),
        ("1e999", "too large"),
        ("[1, 2", "does not parse"),
        ('{"a": }', "does not parse"),
    ],
)
def test_bad_values_are_errors_with_a_hint(text: str, needle: str) -> None:
    with pytest.raises(InputError, match=needle) as info:
        parse_value(text, where="-O size")
    assert "-O size" in str(info.value) and info.value.hint


def test_items_keep_their_order_and_split_at_the_first_equals() -> None:
    parsed = parse_key_values(["b=1", " a =x=y", "c=null"], "-O", example="k=v")
    assert list(parsed.items()) == [("b", 1), ("a", "x=y"), ("c", None)]
    assert parse_key_values(None, "-O", example="k=v") == {} == parse_key_values([], "-O", example="k=v")


def test_dotted_keys_only_where_the_flag_allows_them() -> None:
    items = ["nemo-c.mask=0123456789abcdef", "rta.n_tokens=3", "lr=0.05"]
    assert parse_key_values(items, "--mitigation-param", example="k=v", dotted=True) == {
        "nemo-c.mask": "0123456789abcdef",
        "rta.n_tokens": 3,
        "lr": 0.05,
    }
    with pytest.raises(InputError, match="not an identifier") as info:
        parse_key_values(["rta.n_tokens=3"], "-O", example="model_type=vit_b")
    assert info.value.hint == "-O model_type=vit_b"


@pytest.mark.parametrize(
    ("item", "needle"),
    [
        ("novalue", "needs KEY=VALUE"),
        ("=3", "needs KEY=VALUE"),
        ("model-type=x", "not an identifier"),
        ("2k=x", "not an identifier"),
        (".k=x", "not an identifier or PLUGIN.NAME"),
        ("a.=x", "not an identifier"),
    ],
)
def test_bad_items_are_errors_naming_the_flag(item: str, needle: str) -> None:
    with pytest.raises(InputError, match=needle) as info:
        parse_key_values([item], "--option", example="model_type=vit_b", dotted=item.startswith("."))
    assert "--option" in str(info.value) and info.value.hint


def test_a_repeated_key_is_an_error() -> None:
    with pytest.raises(InputError, match="sets 'k' twice") as info:
        parse_key_values(["k=1", "j=2", "k=3"], "-M", example="k=v")
    assert "('1' and '3')" in str(info.value)


def test_every_flag_uses_the_one_reader() -> None:
    """No other KEY=VALUE reader in the commands: they all import parse_key_values."""
    import inspect

    from fbmem_data.cli import fbmem_cmds, generate_cmds, utility_cmds

    for module in (fbmem_cmds, generate_cmds, utility_cmds):
        source = inspect.getsource(module)
        assert "parse_key_values" in source and "coerce_param" not in source, module.__name__
