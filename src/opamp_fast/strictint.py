"""The one parser for decimal integers that arrive as text: query and path parameters, request
headers, signed-URL expiries, event ids, semantic-version numbers, token lifetimes.

Why not ``text.isdigit()`` then ``int(text)``: ``isdigit`` is true for ``"²"``, which ``int``
then refuses (a ValueError deep in a handler, so a 500), and ``int`` itself accepts more than a
client should send: other scripts' digits (U+0661 is 1), ``"1_000"``, surrounding whitespace.
Only ASCII digits pass here, and never more than a stated number of them, so a huge value
costs nothing to refuse.
"""

from __future__ import annotations

__all__ = ["parse_ascii_int"]


def parse_ascii_int(text: str, *, max_digits: int, signed: bool = False) -> int | None:
    """The value of ``text`` when it is 1 to ``max_digits`` ASCII digits (after one ``-`` when
    ``signed``), else None. Never raises."""
    negative = signed and text[:1] == "-"
    digits = text[1:] if negative else text
    if not 0 < len(digits) <= max_digits or not digits.isascii() or not digits.isdigit():
        return None
    return -int(digits) if negative else int(digits)
