"""The one integer parser for text from clients: ASCII digits only, bounded, never raises."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opamp_fast.strictint import parse_ascii_int


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("007", 7),
        ("123456789012345678", 123456789012345678),
        ("1234567890123456789", None),  # 19 digits: over the bound given below
        ("", None),
        ("-", None),
        ("-5", None),  # unsigned unless asked
        ("+5", None),
        (" 5", None),
        ("5 ", None),
        ("1_000", None),
        ("1e3", None),
        ("\u00b2", None),  # superscript two: str.isdigit() is true, int() refuses it
        ("\u0661", None),  # Arabic-Indic one: int() would read 1
        ("\uff15", None),  # fullwidth five
    ],
)
def test_only_ascii_digits_within_the_bound(text: str, expected: int | None) -> None:
    assert parse_ascii_int(text, max_digits=18) == expected


def test_signed() -> None:
    assert parse_ascii_int("-5", max_digits=3, signed=True) == -5
    assert parse_ascii_int("5", max_digits=3, signed=True) == 5
    assert parse_ascii_int("+5", max_digits=3, signed=True) is None
    assert parse_ascii_int("--5", max_digits=3, signed=True) is None
    assert parse_ascii_int("-", max_digits=3, signed=True) is None


@given(st.text(max_size=30))
def test_never_raises_and_agrees_with_int_on_what_it_accepts(text: str) -> None:
    value = parse_ascii_int(text, max_digits=20, signed=True)
    if value is not None:
        assert value == int(text) and text.isascii() and text.strip() == text
