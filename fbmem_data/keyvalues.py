"""The one reader of KEY=VALUE settings (`-O`, `-M`, `--mitigation-param`, ...), with one set of rules.

Each item is split at its first `=` (the value may hold more). The key, stripped of spaces, is a Python
identifier; where a flag allows it (`dotted=True`), `PLUGIN.KEY` addresses one plug-in (`nemo-c.mask=...`).
A key given twice is an error. The value, read after stripping surrounding spaces, in this order:

| value (case-insensitive words)   | becomes                                        |
|----------------------------------|------------------------------------------------|
| empty (`KEY=`)                   | an error: write `KEY=null` for no value, `KEY='""'` for empty text |
| `null`, `none`                   | None                                           |
| `true`, `false`                  | True, False                                    |
| starts with `{`, `[` or `"`      | parsed as JSON (an error if it does not parse) |
| 16 hex digits (an fbmem id)      | text, even when every digit is decimal         |
| a leading zero before a digit    | text (`0012`), while `0`, `0.5`, `0e3` are numbers |
| an integer (`3`, `-2`)           | int                                            |
| a decimal number (`0.8`, `1e-4`, `inf`) | float; `nan` is an error                |
| anything else                    | the text as typed (not stripped)               |

So a number or word meant as text is written as a JSON string: `-O 'name="true"'`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any

from fbmem_data.errors import InputError

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_PLUGIN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*\Z")
_INT = re.compile(r"[+-]?[0-9]+\Z")
_FLOAT = re.compile(
    r"[+-]?([0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)([eE][+-]?[0-9]+)?\Z|[+-]?inf(inity)?\Z", re.IGNORECASE
)
_FBMEM_ID = re.compile(r"[0-9a-f]{16}\Z")
_WORDS: dict[str, Any] = {"null": None, "none": None, "true": True, "false": False}


def parse_value(text: str, *, where: str = "value") -> Any:
    """One VALUE by the module's rules.

    Args:
        text: the text after the first `=`.
        where: names the setting in errors (e.g. "--option model_type").

    Returns:
        None, a bool, an int, a float, a JSON value, or the text as typed.

    Raises:
        InputError: the value is empty, is NaN, or starts like JSON and does not parse.
    """
    stripped = text.strip()
    if not stripped:
        raise InputError(
            f"{where} has an empty value",
            hint=f"write {where.split()[-1]}=null for no value, or {where.split()[-1]}='\"\"' for empty text",
        )
    lowered = stripped.lower()
    if lowered in _WORDS:
        return _WORDS[lowered]
    if stripped[0] in '{["':
        try:
            return json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise InputError(
                f"{where}: {stripped!r} starts like JSON but does not parse ({exc.msg} at character {exc.pos})",
                hint="quote the whole value for the shell, e.g. -O 'sizes=[1, 2]'",
            ) from None
    if _FBMEM_ID.match(stripped) or (len(stripped) > 1 and stripped[0] == "0" and stripped[1].isdigit()):
        return text  # an id or a code: its digits are not a quantity
    if _INT.match(stripped):
        return int(stripped)
    if lowered.lstrip("+-") == "nan":
        raise InputError(f"{where} is NaN", hint="give a number, or null for no value")
    if _FLOAT.match(stripped):
        value = float(stripped)
        if math.isinf(value) and "inf" not in lowered:
            raise InputError(f"{where}: {stripped} is too large for a float", hint="give a smaller number")
        return value
    return text


def parse_key_values(
    items: Sequence[str] | None, flag: str, *, example: str, dotted: bool = False
) -> dict[str, Any]:
    """Repeated KEY=VALUE items of one flag -> {key: value}, by the module's rules.

    Args:
        items: the flag's values as given (None or empty: no settings).
        flag: the flag's name, for errors (e.g. "--option").
        example: one valid item, shown in hints (e.g. "model_type=vit_b").
        dotted: allow `PLUGIN.KEY` keys (one plug-in's setting).

    Returns:
        The settings in the order given.

    Raises:
        InputError: an item has no `=`, a key is not an identifier (or `PLUGIN.KEY` where allowed), a key
            is given twice, or a value breaks the rules (empty, NaN, bad JSON).
    """
    out: dict[str, Any] = {}
    given: dict[str, str] = {}  # as typed, for the repeated-key error
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InputError(f"{flag} needs KEY=VALUE, got {item!r}", hint=f"{flag} {example}")
        plugin, dot, name = key.rpartition(".")
        if not _IDENTIFIER.match(name) or (dot and not (dotted and _PLUGIN.match(plugin))):
            form = "an identifier or PLUGIN.NAME" if dotted else "an identifier (letters, digits, _)"
            raise InputError(f"{flag}: key {key!r} is not {form}", hint=f"{flag} {example}")
        if key in out:
            raise InputError(
                f"{flag} sets {key!r} twice ({given[key]!r} and {value.strip()!r})", hint="give each key once"
            )
        out[key] = parse_value(value, where=f"{flag} {key}")
        given[key] = value.strip()
    return out
