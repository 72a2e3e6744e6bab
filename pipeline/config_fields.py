"""How a setting of :mod:`pipeline.config` is declared and read.

A setting is a dataclass field: its annotation is its type, :func:`setting` gives its default and what a value must
be (bounds, choices, not empty, a sum), so each setting's type and range are declared in one place, beside its
meaning. :func:`convert` turns what comes in (a ``--set`` text, a YAML value) into that type, strictly (``1.7`` is
no whole number, ``ture`` no boolean, a YAML list no text), and checks it; any bad value is one ``EdgepickError``
line naming the setting. ``--set`` values are texts read as the setting's type, not as YAML: ``listen.port=-`` is
the text ``-``, ``distill.out=`` the empty text, ``sweep.alphas=`` the empty list, ``benchmark.threshold=none``
None.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing

from pipeline.errors import EdgepickError

BOOLEANS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
NONE_TEXTS = ("", "none", "null", "~")


def setting(default=dataclasses.MISSING, *, factory=dataclasses.MISSING, ge=None, gt=None, le=None, lt=None,
            choices=None, kind: str = "value", nonempty: bool = False, length: int | None = None,
            total: float | None = None):
    """A setting's field: its ``default`` (or ``factory``) and what a value must be: within the bounds ``ge`` (>=),
    ``gt`` (>), ``le`` (<=), ``lt`` (<), one of ``choices`` (an unknown one is named as a ``kind``), ``nonempty`` (a
    text or list), ``length`` items, items that add up to ``total``. A list's bounds and choices hold for each item."""
    rules = {"ge": ge, "gt": gt, "le": le, "lt": lt, "choices": tuple(choices) if choices is not None else None,
             "nonempty": nonempty or None, "length": length, "total": total}
    rules = {name: value for name, value in rules.items() if value is not None}
    if choices is not None:
        rules["kind"] = kind
    return dataclasses.field(default=default, default_factory=factory, metadata={"rules": rules})


def field_types(section: object) -> dict[str, object]:
    """A section's settings: name -> annotation."""
    hints = typing.get_type_hints(type(section))
    return {f.name: hints[f.name] for f in dataclasses.fields(section)}


def field_rules(section: object, name: str) -> dict:
    return next(f.metadata.get("rules", {}) for f in dataclasses.fields(section) if f.name == name)


def flatten(mapping: dict, prefix: str = ""):
    """(``section.key``, value) of a nested mapping of sections, as a YAML file holds them."""
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from flatten(value, dotted + ".")
        else:
            yield dotted, value


def convert(value: object, annotation: object, rules: dict, dotted: str) -> object:
    """``value`` as a setting of type ``annotation``, checked against its ``rules``; one line if it cannot be."""
    if dataclasses.is_dataclass(annotation):
        raise EdgepickError(f"config {dotted} is a section, not a value")
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None or isinstance(value, str) and value.strip().lower() in NONE_TEXTS:
            return None
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        origin = typing.get_origin(annotation)
    if origin is tuple:
        converted = tuple(_scalar(item, item_type, dotted) for item, item_type in _items(value, annotation, dotted))
    else:
        converted = _scalar(value, annotation, dotted)
    check(converted, rules, dotted)
    return converted


def check(value: object, rules: dict, dotted: str) -> None:
    """One line if ``value`` breaks a rule of :func:`setting`."""
    items = value if isinstance(value, tuple) else (value,)
    each = ": each value" if isinstance(value, tuple) else ""
    if rules.get("nonempty") and not (value.strip() if isinstance(value, str) else value):
        raise EdgepickError(f"config {dotted} must not be empty")
    if "length" in rules and len(items) != rules["length"]:
        raise EdgepickError(f"config {dotted} must hold {rules['length']} values, got {len(items)} ({_show(value)})")
    for item in items:
        if "choices" in rules and item not in rules["choices"]:
            raise EdgepickError(f"config {dotted}: unknown {rules['kind']} {item!r}; known: "
                                f"{', '.join(map(str, rules['choices']))}")
        if not _within(item, rules):
            raise EdgepickError(f"config {dotted}{each} must {_bounds_text(rules)}, got {_show(value)}")
    if "total" in rules and not math.isclose(sum(items), rules["total"], abs_tol=1e-6):
        raise EdgepickError(f"config {dotted} must add up to {rules['total']:g}, got {_show(value)} "
                            f"(sum {sum(items):g})")


def check_section(section: object, prefix: str) -> None:
    """Every setting of a section (and its subsections) against its type and rules: the defaults, or values
    assigned in Python rather than read by :func:`convert`."""
    types_ = field_types(section)
    for name, annotation in types_.items():
        value = getattr(section, name)
        if dataclasses.is_dataclass(value):
            check_section(value, f"{prefix}{name}.")
        else:
            convert(value, annotation, field_rules(section, name), f"{prefix}{name}")


def _items(value: object, annotation: object, dotted: str) -> list[tuple[object, object]]:
    """(item, its type) of a list setting: a text is split at commas (``[...]`` allowed), a YAML list taken whole,
    one YAML value is a list of one; ``tuple[float, float, float]`` wants exactly three."""
    if isinstance(value, str):
        text = value.strip()
        text = text[1:-1] if text.startswith("[") and text.endswith("]") else text
        items = [part.strip() for part in text.split(",")] if text.strip() else []
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:  # one value (YAML `base_channels: 8`)
        items = [value]
    args = typing.get_args(annotation)
    if len(args) == 2 and args[1] is Ellipsis:
        return [(item, args[0]) for item in items]
    if len(items) != len(args):
        raise EdgepickError(f"config {dotted} must hold {len(args)} values, got {len(items)} ({_show(value)})")
    return list(zip(items, args))


def _scalar(value: object, annotation: object, dotted: str) -> object:
    if annotation is bool:
        return _boolean(value, dotted)
    if annotation is int:
        return _whole(value, dotted)
    if annotation is float:
        return _number(value, dotted)
    if annotation is str:
        if value is None:  # YAML `key:` with nothing after it
            return ""
        if isinstance(value, (list, tuple, dict, set)):
            raise EdgepickError(f"config {dotted} must be a text, got {_show(value)} (in YAML, quote it: '-')")
        return value if isinstance(value, str) else str(value)
    raise EdgepickError(f"config {dotted}: unsupported setting type {annotation}")


def _boolean(value: object, dotted: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in BOOLEANS:
        return BOOLEANS[value.strip().lower()]
    raise EdgepickError(f"config {dotted} must be true or false (yes / no, 1 / 0), got {_show(value)}")


def _whole(value: object, dotted: str) -> int:
    number = None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float):
        number = value
    elif isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            number = _float_or_none(value)
    if number is None or not math.isfinite(number) or not number.is_integer():
        raise EdgepickError(f"config {dotted} must be a whole number, got {_show(value)}")
    return int(number)


def _number(value: object, dotted: str) -> float:
    number = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        number = _float_or_none(value)
    if number is None or not math.isfinite(number):
        raise EdgepickError(f"config {dotted} must be a finite number, got {_show(value)}")
    return number


def _float_or_none(text: str) -> float | None:
    try:
        return float(text.strip())
    except ValueError:
        return None


def _within(value: object, rules: dict) -> bool:
    tests = {"ge": lambda b: value >= b, "gt": lambda b: value > b, "le": lambda b: value <= b,
             "lt": lambda b: value < b}
    return all(test(rules[name]) for name, test in tests.items() if name in rules)


def _bounds_text(rules: dict) -> str:
    low = ("[", rules["ge"]) if "ge" in rules else ("(", rules["gt"]) if "gt" in rules else None
    high = ("]", rules["le"]) if "le" in rules else (")", rules["lt"]) if "lt" in rules else None
    if low and high:
        return f"lie in {low[0]}{low[1]:g}, {high[1]:g}{high[0]}"
    if low:
        return f"be {'>=' if low[0] == '[' else '>'} {low[1]:g}"
    return f"be {'<=' if high[0] == ']' else '<'} {high[1]:g}"


def _show(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) or "nothing"
    return repr(value) if isinstance(value, str) else str(value)
