"""Secrets in the configs agents report: cut out before they are stored, shown or sent on.

Why: an agent's effective config (``EffectiveConfig``) is what it runs, exporter API keys,
passwords and bearer tokens included. The server stores it for the REST API and the console, so
it would spread those secrets to every operator and every database backup. Remote configs that
operators upload are theirs and are never changed here.

What is redacted (:func:`redact_body`), per file of the ``AgentConfigMap``:

* the value of every key that names a secret: its normalised name (lower case, without ``-``,
  ``_``, ``.`` and spaces) contains a word of the policy (``--redact-keys``; default
  :data:`DEFAULT_SECRET_WORDS`). A nested mapping or list under such a key loses every value
  (its keys stay). Kept: ``null``, a value that is only a reference such as
  ``${env:DD_API_KEY}``, and the value of a name that ends in ``file``, ``filename``, ``path``,
  ``dir`` or ``directory`` (``key_file``): each names where the secret is, not the secret (a
  word of the policy that itself ends so, such as ``keyfile``, still redacts it);
* a ``{key|name: ..., value: ...}`` pair (attribute actions, header lists) is decided by what the
  key or name says: ``{name: Authorization, value: ...}`` loses its value, ``{key: service.name,
  value: checkout}`` keeps both;
* whatever the key, credentials inside any value: the credentials of ``Bearer``/``Basic``
  header values, the password of a URL (``scheme://user:password@``), the body of a PEM private
  key; and in comments, what follows ``<secret-named word>:`` or ``=``.

How: without a YAML library. JSON and YAML flow collections go through one small recursive
parser; YAML block structure through a line and indentation scanner that knows what a
collector config uses (mappings, sequences at the same indentation as their key, plain scalars
over several lines, quoted scalars over several lines, block scalars, anchors, tags, comments,
several documents). Both build a tree of spans in the original text; the redacted text is the
original with those spans replaced, so everything that is not a secret keeps its bytes. A body
the scanner does not fully understand (a construct it does not know, tabs in indentation, a
text format other than JSON or YAML, bytes that are not UTF-8) is withheld whole: only its hash
and size are kept. The redaction never guesses.

The caller keeps a hash of what the agent reported (:class:`ConfigRedactor`), so drift and
change detection work on the real content. Costly for big bodies: call it off the event loop
(the batch writer's thread does), once per distinct body (the redactor caches by hash).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "DEFAULT_SECRET_WORDS",
    "REDACTED",
    "ConfigRedactor",
    "RedactedBody",
    "RedactionPolicy",
    "config_outline",
    "redact_body",
    "redact_error_text",
    "redact_value_text",
    "without_nul",
]

REDACTED: Final = "<redacted>"
#: Bumped when what is redacted changes: stored configs redacted before are redone.
#: 2: names of paths (``key_file``) are no longer secret names.
ALGORITHM: Final = 2
#: A body that may hold secrets and is larger than this is withheld, not parsed: parsing costs
#: about a microsecond per byte in the writer's thread, and an agent may report a new one often.
MAX_PARSED_BYTES: Final = 256 * 1024
DEFAULT_SECRET_WORDS: Final = (
    "password",
    "passwd",
    "secret",
    "token",
    "key",
    "credential",
    "authorization",
    "cookie",
)
#: A normalised key name that ends so holds a path (``key_file``, ``bearer_token_file``,
#: ``keystore_path``): shown, though it contains a secret word.
_PATH_SUFFIXES: Final = ("file", "filename", "path", "dir", "directory")
_SEPARATORS: Final = str.maketrans("", "", " \t\r\n\f\v_.-")
_SEPARATOR_BYTES: Final = b" \t\r\n\f\v_.-"


def _normalize(name: str) -> str:
    return name.lower().translate(_SEPARATORS)


@functools.lru_cache(maxsize=16)
def _words_pattern(words: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile("|".join(map(re.escape, words)))


@dataclass(frozen=True, slots=True)
class RedactionPolicy:
    """The words that make a key name a secret (normalised, see the module docstring)."""

    words: tuple[str, ...] = DEFAULT_SECRET_WORDS

    def secret_key(self, name: str) -> bool:
        norm = _normalize(name)
        if _words_pattern(self.words).search(norm) is None:
            return False
        if not norm.endswith(_PATH_SUFFIXES):
            return True
        # ``key_file``, ``token_path``: where a secret is kept, not the secret; unless a word of
        # the policy names the path itself (an operator's ``keyfile``).
        return any(word in norm for word in self.words if word.endswith(_PATH_SUFFIXES))

    @property
    def fingerprint(self) -> str:
        """Names this policy and algorithm in stored configs (a change redoes them)."""
        spec = f"{ALGORITHM}:{','.join(self.words)}".encode()
        return hashlib.sha256(spec).hexdigest()[:16]

    @classmethod
    def parse(cls, text: str) -> RedactionPolicy:
        """A comma-separated word list (``--redact-keys``); ValueError for a short word."""
        words = []
        for raw in text.split(","):
            word = _normalize(raw)
            if len(word) < 3:
                raise ValueError(f"{raw.strip()!r} is not a word of at least 3 letters or digits")
            words.append(word)
        return cls(tuple(dict.fromkeys(words)))


@dataclass(frozen=True, slots=True)
class RedactedBody:
    """``text``: the body with its secrets replaced, or None when it is withheld (``withheld``
    says why). ``redacted``: how many values were replaced."""

    text: str | None
    redacted: int
    withheld: str | None = None


# -- credentials, whatever the key -----------------------------------------------------------
_CREDENTIAL = re.compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9\-._~+/]{8,}=*")
# The password may hold a raw "/" or "#" (invalid, but seen): up to the last "@" before a space.
_URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://[^\s/?#@:]*):[^\s@]+@")
_PRIVATE_KEY = re.compile(
    r"(-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----).*?(-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)", re.S
)
_TRIGGER = re.compile(r"(?i)bearer|basic|://|private key")
_TRIGGER_BYTES: Final = (b"bearer", b"basic", b"://", b"private key")
_REFERENCE = re.compile(r"\$\{[^{}\s]+\}")
_COMMENT_START = re.compile(r"[ \t]#")
_NULLS = frozenset({"", "~", "null", "Null", "NULL"})


def redact_value_text(text: str) -> tuple[str, int]:
    """``text`` with bearer/basic credentials, URL passwords and PEM private keys replaced;
    and how many were."""
    if not _TRIGGER.search(text):
        return text, 0
    text, a = _CREDENTIAL.subn(lambda m: m.group(1) + m.group(2) + REDACTED, text)
    text, b = _URL_PASSWORD.subn(lambda m: m.group(1) + ":" + REDACTED + "@", text)
    text, c = _PRIVATE_KEY.subn(lambda m: m.group(1) + REDACTED + m.group(2), text)
    return text, a + b + c


def without_nul(text: str) -> str:
    """``text`` with its NUL characters replaced (U+FFFD): Postgres rejects NUL in ``text``
    and ``\\u0000`` in ``jsonb``, and an agent may send either in any string."""
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def redact_error_text(text: str) -> str:
    """A free-text error or status an agent reported (its health, a config's, a package's,
    connection settings'), as it is stored, shown and streamed: NUL characters replaced
    (Postgres rejects them) and credentials redacted as in any value. An HTTP client's error
    often quotes the URL it failed on, password and all."""
    return redact_value_text(without_nul(text))[0]


class _Unsupported(Exception):
    """A construct the scanner does not parse: the body is withheld."""


# -- the tree both parsers build: spans of the original text ----------------------------------
class _Scalar:
    """One scalar value: ``kind`` (plain, single, double, block, alias), its span
    ``[start, end)`` without properties, and ``props_start`` where its anchor/tag begin."""

    __slots__ = ("anchors", "end", "flow", "kind", "props_start", "start", "tag")

    def __init__(self, kind: str, start: int, end: int, *, flow: bool) -> None:
        self.kind = kind
        self.start = start
        self.end = end
        self.flow = flow
        self.props_start = start
        self.tag: str | None = None
        self.anchors: list[str] = []


class _Map:
    __slots__ = ("col", "entries")

    def __init__(self, col: int) -> None:
        self.col = col
        self.entries: list[list[Any]] = []  # [key text, value node or None]

    def pending(self) -> bool:
        return bool(self.entries) and self.entries[-1][1] is None

    def put(self, node: Any) -> None:
        self.entries[-1][1] = node


class _Seq:
    __slots__ = ("col", "items")

    def __init__(self, col: int) -> None:
        self.col = col
        self.items: list[Any] = []

    def pending(self) -> bool:
        return bool(self.items) and self.items[-1] is None

    def put(self, node: Any) -> None:
        self.items[-1] = node


_Node = _Scalar | _Map | _Seq | None
_Edit = tuple[int, int, str, int]  # start, end, replacement, values redacted


def _end_of_quoted(text: str, p: int) -> int:
    """Index after the closing quote of the scalar quoted at ``p``: ``"..."`` with backslash
    escapes, or ``'...'`` where ``''`` is a quote."""
    quote = text[p]
    q = p + 1
    while True:
        q = text.find(quote, q)
        if q < 0:
            raise _Unsupported("an unterminated quoted string")
        if quote == "'":
            if not text.startswith("''", q):
                return q + 1
            q += 2
            continue
        backslashes = 0
        while text[q - 1 - backslashes] == "\\":
            backslashes += 1
        if backslashes % 2 == 0:
            return q + 1
        q += 1


_ESCAPES = {
    "0": "\0", "a": "\a", "b": "\b", "t": "\t", "\t": "\t", "n": "\n", "v": "\v", "f": "\f",
    "r": "\r", "e": "\x1b", " ": " ", '"': '"', "/": "/", "\\": "\\", "N": "\x85",
    "_": "\xa0", "L": "\u2028", "P": "\u2029",
}  # fmt: skip
_HEX = {"x": 2, "u": 4, "U": 8}


def _decode_double(inner: str) -> str:
    """A YAML/JSON double-quoted scalar's value (line folding approximated by spaces)."""
    out: list[str] = []
    i = 0
    while i < len(inner):
        c = inner[i]
        if c == "\\":
            e = inner[i + 1 : i + 2]
            if e in _ESCAPES:
                out.append(_ESCAPES[e])
                i += 2
            elif e in _HEX:
                digits = inner[i + 2 : i + 2 + _HEX[e]]
                try:
                    out.append(chr(int(digits, 16)))
                except ValueError:
                    raise _Unsupported("a bad escape in a double-quoted string") from None
                i += 2 + _HEX[e]
            elif e in ("\n", "\r"):  # an escaped line break: it and the indentation vanish
                i += 2
                while i < len(inner) and inner[i] in " \t\r\n":
                    i += 1
            else:
                raise _Unsupported("an unknown escape in a double-quoted string")
        elif c in "\r\n":
            out.append(" ")
            i += 1
            while i < len(inner) and inner[i] in " \t\r\n":
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _blank_run(line: str, p: int) -> int:
    """How many spaces and tabs start at ``p``."""
    return len(line) - p - len(line[p:].lstrip(" \t"))


def _properties(
    text: str, p: int, stops: str, skip: Callable[[int], int]
) -> tuple[int, str | None, list[str]]:
    """The anchors and tag before a node (``&a !tag``): where the node starts, its tag, its
    anchors. ``stops`` end a property, ``skip`` passes the space after one."""
    tag: str | None = None
    anchors: list[str] = []
    while p < len(text) and text[p] in "&!":
        end = p
        while end < len(text) and text[end] not in stops:
            end += 1
        if text[p] == "!":
            tag = text[p:end]
        else:
            anchors.append(text[p:end])
        p = skip(end)
    return p, tag, anchors


def _scalar_value(text: str, s: _Scalar) -> str:
    """The scalar's text, close enough to tell whether it names a secret or is a reference."""
    raw = text[s.start : s.end]
    if s.kind == "double":
        return _decode_double(raw[1:-1])
    if s.kind == "single":
        return " ".join(raw[1:-1].replace("''", "'").split())
    if s.kind == "plain":
        return " ".join(raw.split())
    return raw


# -- the flow parser: JSON, and YAML flow collections ----------------------------------------
_FLOW_STOP = frozenset(",[]{}")


class _FlowParser:
    """Recursive descent over a JSON document or a YAML flow collection, building the tree."""

    def __init__(self, text: str, comments: list[tuple[int, int]]) -> None:
        self.text = text
        self.comments = comments  # (start, end) of each comment met

    def skip(self, p: int) -> int:
        text = self.text
        n = len(text)
        while p < n:
            c = text[p]
            if c in " \t\r\n":
                p += 1
            elif c == "#" and (p == 0 or text[p - 1] in " \t\r\n"):
                end = text.find("\n", p)
                end = n if end < 0 else end
                self.comments.append((p, end))
                p = end
            else:
                break
        return p

    def value(self, p: int) -> tuple[_Node, int]:
        text = self.text
        p = self.skip(p)
        if p >= len(text):
            raise _Unsupported("a flow collection ends early")
        c = text[p]
        if c in "{[":
            return self.collection(p, _Map(-1) if c == "{" else _Seq(-1), "}" if c == "{" else "]")
        props_start = p
        p, tag, anchors = _properties(text, p, " \t\r\n,[]{}", self.skip)
        if p >= len(text):
            raise _Unsupported("properties without a value")
        if text[p] in "{[":
            return self.value(p)
        node = self.scalar(p)
        node.props_start, node.tag, node.anchors = props_start, tag, anchors
        return node, node.end

    def scalar(self, p: int) -> _Scalar:
        text = self.text
        c = text[p]
        if c == '"':
            return _Scalar("double", p, _end_of_quoted(text, p), flow=True)
        if c == "'":
            return _Scalar("single", p, _end_of_quoted(text, p), flow=True)
        if c in "|>@`%?:-" and (c not in "?:-" or text[p + 1 : p + 2] in ("", " ", "\n")):
            raise _Unsupported(f"{c!r} where a flow value was expected")
        if c in _FLOW_STOP or c == "#":
            raise _Unsupported(f"{c!r} where a flow value was expected")
        q = p
        n = len(text)
        while q < n:
            c = text[q]
            if c in _FLOW_STOP:
                break
            if c == ":" and (q + 1 >= n or text[q + 1] in " \t\r\n,[]{}"):
                break
            if c == "#" and text[q - 1] in " \t\r\n":
                break
            q += 1
        while q > p and text[q - 1] in " \t\r\n":
            q -= 1
        return _Scalar("alias" if text[p] == "*" else "plain", p, q, flow=True)

    def collection(self, p: int, node: _Map | _Seq, close: str) -> tuple[_Map | _Seq, int]:
        """The flow mapping or sequence opening at ``p``, up to its ``close``."""
        text = self.text
        p += 1
        while True:
            p = self.skip(p)
            if p >= len(text):
                raise _Unsupported("an unterminated flow collection")
            if text[p] == close:
                return node, p + 1
            p = self._entry(node, p) if isinstance(node, _Map) else self._item(node, p)
            if p < len(text) and text[p] == ",":
                p += 1
            elif p >= len(text) or text[p] != close:
                raise _Unsupported(f"no , or {close} in a flow collection (or a single-pair map)")

    def _entry(self, node: _Map, p: int) -> int:
        text = self.text
        if text[p] in "{[":
            raise _Unsupported("a collection as a mapping key")
        key = self.scalar(p)
        p = self.skip(key.end)
        value: _Node = None
        if p < len(text) and text[p] == ":":
            value, p = self.value(p + 1)
            p = self.skip(p)
        node.entries.append([_scalar_value(text, key), value])
        return p

    def _item(self, node: _Seq, p: int) -> int:
        item, p = self.value(p)
        node.items.append(item)
        return self.skip(p)


# -- the block scanner: YAML's indentation structure ------------------------------------------
class _Lines:
    """The text's lines as (start, end) offsets, end without the line break (and its \\r)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.spans: list[tuple[int, int]] = []
        start = 0
        for line in text.split("\n"):
            end = start + len(line)
            self.spans.append((start, end - 1 if line.endswith("\r") else end))
            start = end + 1

    def __len__(self) -> int:
        return len(self.spans)

    def line(self, i: int) -> str:
        start, end = self.spans[i]
        return self.text[start:end]

    def indent(self, i: int) -> int | None:
        """Spaces before the content; None for a blank line; _Unsupported for a tab in them."""
        line = self.line(i)
        stripped = line.lstrip(" ")
        if not stripped.strip():
            return None
        if stripped[0] == "\t":
            raise _Unsupported("a tab in indentation")
        return len(line) - len(stripped)


class _BlockScanner:
    """Builds the tree of one YAML stream from its lines. Each structural line is a sequence
    dash, a mapping key or (nested under an empty key or dash) a value; a value may take more
    lines (block scalar, quoted or plain over several lines, flow collection)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.lines = _Lines(text)
        self.comments: list[tuple[int, int]] = []
        self.roots: list[_Node] = []
        self.stack: list[_Map | _Seq] = []
        self.has_root = False

    def scan(self) -> list[_Node]:
        i = 0
        lines = self.lines
        while i < len(lines):
            col = lines.indent(i)
            if col is None:
                i += 1
                continue
            start, _ = lines.spans[i]
            line = lines.line(i)
            if line[col] == "#":
                self.comments.append((start + col, lines.spans[i][1]))
                i += 1
            elif col == 0 and line[:3] in ("---", "...") and line[3:4] in ("", " ", "\t"):
                self.stack, self.has_root = [], False
                rest = line[3:].lstrip()
                if rest and not rest.startswith("#"):
                    if line[:3] == "...":
                        raise _Unsupported("content after a document end marker")
                    i = self.content(i, len(line) - len(rest))
                else:
                    self._trailing(start + 3, lines.spans[i][1])
                    i += 1
            elif col == 0 and line[0] == "%":
                i += 1  # a directive
            else:
                i = self.content(i, col)
        return self.roots

    def _trailing(self, p: int, end: int) -> None:
        """After a value: only a comment may follow on its line."""
        rest = self.text[p:end]
        stripped = rest.lstrip(" \t")
        if not stripped:
            return
        if stripped[0] != "#" or (stripped == rest and self.text[p - 1 : p] not in (" ", "\t")):
            raise _Unsupported("text after a value")  # a comment needs a space before it
        self.comments.append((end - len(stripped), end))

    def _attach(self, col: int, kind: str) -> _Map | _Seq | None:
        """Close what ``col`` ends; returns the container the line continues (a dash: the
        sequence; a key: the mapping), or None when the line opens a new container or is a
        value in the top's pending slot (or the root)."""
        stack = self.stack
        while stack and stack[-1].col > col:
            stack.pop()
        while stack and stack[-1].col == col:
            top = stack[-1]
            if kind == "dash" and isinstance(top, _Seq):
                return top
            if kind == "key" and isinstance(top, _Map):
                return top
            if kind == "key" and isinstance(top, _Seq):
                stack.pop()  # a sequence at its key's indentation ends with the next key
                continue
            if kind == "dash" and isinstance(top, _Map) and top.pending():
                return None  # a sequence at the same indentation as its key
            raise _Unsupported("a line that fits no open mapping or sequence")
        if stack and not stack[-1].pending():
            raise _Unsupported("more indented content where no value is pending")
        if not stack and self.has_root:
            raise _Unsupported("a second root node in one document")
        return None

    def _place(self, node: Any) -> None:
        if self.stack:
            self.stack[-1].put(node)
        else:
            self.roots.append(node)
            self.has_root = True
        if isinstance(node, _Map | _Seq):
            self.stack.append(node)

    def content(self, i: int, col: int) -> int:
        """The structural content starting at column ``col`` of line ``i``; the next line."""
        line = self.lines.line(i)
        rest = line[col:]
        if rest[:1] == "-" and rest[1:2] in ("", " "):
            seq = self._attach(col, "dash")
            if not isinstance(seq, _Seq):
                seq = _Seq(col)
                self._place(seq)
            seq.items.append(None)
            after = col + 1 + len(rest[1:]) - len(rest[1:].lstrip(" "))
            if after >= len(line) or line[after] == "#":
                self._trailing(self.lines.spans[i][0] + col + 1, self.lines.spans[i][1])
                return i + 1
            return self.content(i, after)
        if rest[:2] in ("? ", ": ") or rest in ("?", ":"):
            raise _Unsupported("an explicit (complex) mapping key")
        key = self._key(line, col)
        if key is not None:
            mapping = self._attach(col, "key")
            if not isinstance(mapping, _Map):
                mapping = _Map(col)
                self._place(mapping)
            text, value_col = key
            mapping.entries.append([text, None])
            return self.value(i, value_col, col)
        self._attach(col, "value")
        if not self.stack and rest[:1] not in ("[", "{"):
            raise _Unsupported("a document that is a scalar, not a configuration")
        return self.value(i, col, self.stack[-1].col if self.stack else -1)

    def _key(self, line: str, col: int) -> tuple[str, int] | None:
        """``(key text, column of its value)`` when the line has a mapping key at ``col``."""
        c = line[col]
        if c in "\"'":
            try:
                end = _end_of_quoted(line, col)
            except _Unsupported:
                return None  # a quoted value over several lines
            after = end + len(line[end:]) - len(line[end:].lstrip(" "))
            if line[after : after + 1] == ":" and line[after + 1 : after + 2] in ("", " ", "\t"):
                key = _Scalar("double" if c == '"' else "single", col, end, flow=False)
                return _scalar_value(line, key), after + 1
            return None
        if c in "[{*&!|>@`%#,]}":
            return None
        q = col
        while True:
            q = line.find(":", q)
            if q < 0:
                return None
            hash_at = line.find(" #", col, q)
            if hash_at >= 0:
                return None
            if q + 1 >= len(line) or line[q + 1] in " \t":
                return line[col:q].rstrip(), q + 1
            q += 1

    def value(self, i: int, p: int, owner: int) -> int:
        """The value at column ``p`` of line ``i`` (after ``key:``, or a nested value line) of
        a slot whose container sits at column ``owner``; returns the next line."""
        lines = self.lines
        line_start, line_end = lines.spans[i]
        line = lines.line(i)
        p += _blank_run(line, p)
        if p >= len(line) or line[p] == "#":
            self._trailing(line_start + p, line_end)
            return i + 1  # empty: the slot stays pending for nested lines
        props_start = line_start + p
        p, tag, anchors = _properties(line, p, " \t", lambda q: q + _blank_run(line, q))
        if p >= len(line) or line[p] == "#":
            self._trailing(line_start + p, line_end)
            return i + 1  # properties of a nested node: it comes on the next lines
        node, next_line = self._scalar_or_flow(i, p, owner)
        if isinstance(node, _Scalar):
            node.props_start, node.tag, node.anchors = props_start, tag, anchors
        self._place(node)
        if isinstance(node, _Map | _Seq):
            self.stack.pop()  # a flow collection is complete: nothing nests under it
        return next_line

    def _scalar_or_flow(self, i: int, p: int, owner: int) -> tuple[Any, int]:
        text = self.text
        lines = self.lines
        line_start, _ = lines.spans[i]
        c = lines.line(i)[p]
        at = line_start + p
        if c in "[{":
            node, end = _FlowParser(text, self.comments).value(at)
            return node, self._after_span(end)
        if c == '"' or c == "'":
            end = _end_of_quoted(text, at)
            return _Scalar("double" if c == '"' else "single", at, end, flow=False), (
                self._after_span(end)
            )
        if c in "|>":
            return self._block_scalar(i, p, owner)
        if c in "@`%,]}" or (c in "-?:" and lines.line(i)[p + 1 : p + 2] in ("", " ", "\t")):
            raise _Unsupported(f"{c!r} where a block value was expected")
        return self._plain(i, p, owner)

    def _after_span(self, end: int) -> int:
        """The line after the one where a span ended, checking what follows it on that line."""
        i = self._line_of(end)
        self._trailing(end, self.lines.spans[i][1])
        return i + 1

    def _line_of(self, offset: int) -> int:
        lo, hi = 0, len(self.lines.spans) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.lines.spans[mid][0] <= offset:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def _block_scalar(self, i: int, p: int, owner: int) -> tuple[_Scalar, int]:
        lines = self.lines
        line_start, line_end = lines.spans[i]
        header = lines.line(i)[p:]
        indicator = re.match(r"[|>][-+0-9]*", header)
        assert indicator is not None
        self._trailing(line_start + p + indicator.end(), line_end)
        last = i
        j = i + 1
        while j < len(lines):
            text = lines.line(j)
            if text.strip():
                if len(text) - len(text.lstrip(" ")) <= owner:
                    break
                last = j
            j += 1
        end = lines.spans[last][1] if last > i else line_start + p + indicator.end()
        return _Scalar("block", line_start + p, end, flow=False), last + 1

    def _plain(self, i: int, p: int, owner: int) -> tuple[_Scalar, int]:
        lines = self.lines
        line_start, line_end = lines.spans[i]
        line = lines.line(i)
        comment = _COMMENT_START.search(line, p)
        hash_at = -1 if comment is None else comment.start()
        first_end = len(line) if hash_at < 0 else hash_at
        head = line[p:first_end].rstrip()
        if ": " in head or head.endswith(":"):
            raise _Unsupported("a mapping value on the line of another")
        end = line_start + p + len(head)
        last = i
        if hash_at >= 0:
            self.comments.append((line_start + hash_at + 1, line_end))
        else:
            j = i + 1
            while j < len(lines):
                text = lines.line(j)
                if not text.strip():
                    j += 1
                    continue
                col = lines.indent(j)
                assert col is not None
                body = text[col:]
                if col <= owner or body.startswith("#") or _COMMENT_START.search(body):
                    break
                if ": " in body or body.endswith(":") or body[:3] in ("---", "..."):
                    break
                last = j
                j += 1
            if last > i:
                end = lines.spans[last][1]
        return _Scalar("alias" if line[p] == "*" else "plain", line_start + p, end, flow=False), (
            last + 1
        )


# -- deciding and editing -------------------------------------------------------------------
class _Redactor:
    """Walks the tree with the policy and collects the edits."""

    def __init__(self, text: str, policy: RedactionPolicy) -> None:
        self.text = text
        self.policy = policy
        self.edits: list[_Edit] = []
        self._anchored: dict[str, tuple[_Scalar, bool]] = {}  # &name -> scalar, redacted
        self._secret_aliases: set[str] = set()

    def aliases(self) -> None:
        """A secret given through an alias (``password: *x``) is also cut where it is
        anchored (``name: &x s3cret``); an alias to a collection there cannot be followed."""
        for name in self._secret_aliases:
            anchored = self._anchored.get(name)
            if anchored is None:
                raise _Unsupported("an alias to a collection where a secret is expected")
            node, redacted = anchored
            if not redacted:
                self._scalar(node, True)

    def walk(self, node: _Node, secret: bool) -> None:
        if isinstance(node, _Map):
            self._mapping(node, secret)
        elif isinstance(node, _Seq):
            for item in node.items:
                self.walk(item, secret)
        elif node is not None:
            self._scalar(node, secret)

    def _mapping(self, node: _Map, secret: bool) -> None:
        norms = [_normalize(key) for key, _ in node.entries]
        pair = "value" in norms and ("key" in norms or "name" in norms)
        named = pair and any(
            not isinstance(value, _Scalar) or self.policy.secret_key(self._value(value))
            for norm, (_, value) in zip(norms, node.entries, strict=True)
            if norm in ("key", "name") and value is not None
        )
        for norm, (key, value) in zip(norms, node.entries, strict=True):
            if pair and norm in ("key", "name"):
                flag = secret
            elif pair and norm == "value":
                flag = secret or named
            else:
                flag = secret or self.policy.secret_key(key)
            self.walk(value, flag)

    def _value(self, s: _Scalar) -> str:
        return _scalar_value(self.text, s)

    def _scalar(self, s: _Scalar, secret: bool) -> None:
        raw = self.text[s.start : s.end]
        for anchor in s.anchors:
            self._anchored[anchor[1:]] = (s, secret)
        if (s.kind == "plain" and raw in _NULLS) or (s.tag or "").endswith(("!null", ":null>")):
            return
        if secret and s.kind == "alias":
            self._secret_aliases.add(raw[1:])
        if secret:
            if s.kind != "block" and _REFERENCE.fullmatch(self._value(s)):
                return
            start = s.props_start if s.tag is not None else s.start
            keep = " ".join(s.anchors) + " " if s.tag is not None and s.anchors else ""
            marker = f'"{REDACTED}"' if s.flow else REDACTED
            self.edits.append((start, s.end, keep + marker, 1))
            return
        self._credentials(s, raw)

    def _credentials(self, s: _Scalar, raw: str) -> None:
        if s.kind in ("double", "single"):
            inner = raw[1:-1]
            if s.kind == "double" and "\\" in inner:
                self._escaped_credentials(s, inner)
                return
            changed, n = redact_value_text(inner)
            if n:
                self.edits.append((s.start + 1, s.end - 1, changed, n))
            return
        changed, n = redact_value_text(raw)
        if n:
            self.edits.append((s.start, s.end, changed, n))

    def _escaped_credentials(self, s: _Scalar, inner: str) -> None:
        """A double-quoted scalar with escapes: redact its decoded value, write it back as
        JSON (valid in YAML too); whole when it cannot be decoded and might hold one."""
        try:
            value = _decode_double(inner)
        except _Unsupported:
            if _TRIGGER.search(inner):
                self.edits.append((s.start, s.end, f'"{REDACTED}"', 1))
            return
        changed, n = redact_value_text(value)
        if n:
            self.edits.append((s.start, s.end, json.dumps(changed), n))

    def comments(self, spans: list[tuple[int, int]]) -> None:
        for start, end in spans:
            changed, n = _redact_comment(self.text[start:end], self.policy)
            if n:
                self.edits.append((start, end, changed, n))

    def result(self) -> tuple[str, int]:
        out: list[str] = []
        at = 0
        count = 0
        for start, end, replacement, n in sorted(self.edits):
            if start < at:
                continue  # inside a span already replaced (a block scalar's header comment)
            out.append(self.text[at:start])
            out.append(replacement)
            at = end
            count += n
        out.append(self.text[at:])
        return "".join(out), count


_COMMENT_PAIR = re.compile(r"([\w.\-/]+)([ \t]*[:=][ \t]*)(\S.*)")


def _redact_comment(comment: str, policy: RedactionPolicy) -> tuple[str, int]:
    """A comment: what follows ``<secret-named word>:`` (or ``=``) goes, and credentials."""
    n = 0
    for match in _COMMENT_PAIR.finditer(comment):
        if policy.secret_key(match.group(1)):
            comment = comment[: match.start(3)] + REDACTED
            n = 1
            break
    comment, more = redact_value_text(comment)
    return comment, n + more


# -- entry points ----------------------------------------------------------------------------
def _json(text: str, policy: RedactionPolicy) -> tuple[str, int]:
    comments: list[tuple[int, int]] = []
    parser = _FlowParser(text, comments)
    start = parser.skip(0)
    if start >= len(text) or text[start] not in "[{" or comments:
        raise _Unsupported("not a JSON object or array")
    node, end = parser.value(start)
    if parser.skip(end) != len(text):
        raise _Unsupported("text after the JSON document")
    redactor = _Redactor(text, policy)
    redactor.walk(node, False)
    redactor.aliases()
    return redactor.result()


def _yaml(text: str, policy: RedactionPolicy) -> tuple[str, int]:
    scanner = _BlockScanner(text)
    roots = scanner.scan()
    redactor = _Redactor(text, policy)
    for root in roots:
        redactor.walk(root, False)
    redactor.aliases()
    redactor.comments(scanner.comments)
    return redactor.result()


def _format(content_type: str, text: str) -> str:
    media = content_type.split(";", 1)[0].strip().lower()
    if "json" in media:
        return "json"
    if "yaml" in media or "yml" in media:
        return "yaml"
    if media in ("", "text/plain", "application/octet-stream"):
        return "json" if text.lstrip()[:1] in ("{", "[") and _is_json(text) else "yaml"
    return "other"


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True


def _may_hold_secrets(body: bytes, text: str, policy: RedactionPolicy) -> bool:
    """False when no key can name a secret (no word anywhere, whatever the separators) and no
    value can hold a credential: the text is then returned as it is, without parsing."""
    if body.isascii():  # bytes operations: a few microseconds for a typical config
        low = body.lower()
        if any(trigger in low for trigger in _TRIGGER_BYTES):
            return True
        norm = low.translate(None, _SEPARATOR_BYTES)
        return any(word.encode() in norm for word in policy.words)
    folded = text.lower().translate(_SEPARATORS)
    return bool(_TRIGGER.search(text)) or any(word in folded for word in policy.words)


def redact_body(body: bytes, content_type: str, policy: RedactionPolicy) -> RedactedBody:
    """One reported config file with its secrets replaced, or withheld (see the module)."""
    if b"\x00" in body:
        return RedactedBody(None, 0, "binary (not UTF-8 text)")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return RedactedBody(None, 0, "binary (not UTF-8 text)")
    kind = _format(content_type, text)
    if kind == "other":
        return RedactedBody(None, 0, f"not parsed: {content_type} is neither JSON nor YAML")
    if not _may_hold_secrets(body, text, policy):
        return RedactedBody(text, 0)
    if len(body) > MAX_PARSED_BYTES:
        return RedactedBody(None, 0, f"not parsed: larger than {MAX_PARSED_BYTES // 1024} KiB")
    try:
        if kind == "json":
            if not _is_json(text):
                raise _Unsupported("invalid JSON")
            redacted, count = _json(text, policy)
        else:
            redacted, count = _yaml(text, policy)
    except _Unsupported as exc:
        return RedactedBody(None, 0, f"not parsed as {kind.upper()}: {exc}")
    except Exception as exc:  # hostile input must never fail the writer's flush: withhold it
        reason = "too deeply nested" if isinstance(exc, RecursionError) else "malformed"
        return RedactedBody(None, 0, f"not parsed as {kind.upper()}: {reason}")
    return RedactedBody(redacted, count)


#: The largest config file :func:`config_outline` reads (parsing costs about a microsecond a
#: byte); a larger one has no outline.
MAX_OUTLINED_BYTES: Final = 4 * 1024 * 1024


def config_outline(body: bytes, content_type: str) -> dict[str, list[str]] | None:
    """The top-level keys of a JSON or YAML config file, each with the keys of its value when
    that is a mapping (``[]`` otherwise); the documents of a YAML stream are merged. Read by
    the same parsers as :func:`redact_body`: None when the body is not one they read with
    certainty (not UTF-8 text, another format, a construct they do not know, larger than
    ``MAX_OUTLINED_BYTES``). A collector config's ``receivers:`` section gives its receivers'
    ids (``otlp``, ``otlp/2``)."""
    if b"\x00" in body or len(body) > MAX_OUTLINED_BYTES:
        return None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    kind = _format(content_type, text)
    try:
        if kind == "json":
            if not _is_json(text):
                return None
            parser = _FlowParser(text, [])
            roots: list[_Node] = [parser.value(parser.skip(0))[0]]
        elif kind == "yaml":
            roots = _BlockScanner(text).scan()
        else:
            return None
    except _Unsupported:
        return None
    except Exception:  # hostile input gets no outline, never an error (as in redact_body)
        return None
    outline: dict[str, list[str]] = {}
    for root in roots:
        for key, value in root.entries if isinstance(root, _Map) else ():
            children = [k for k, _ in value.entries] if isinstance(value, _Map) else []
            outline.setdefault(key, []).extend(children)
    return outline


class ConfigRedactor:
    """The JSON shape of reported config files, redacted, cached by the hash of each body
    (a fleet mostly reports a few distinct configs). Thread-safe; used by the writer's thread."""

    def __init__(
        self,
        policy: RedactionPolicy | None = None,
        *,
        max_entries: int = 512,
        max_bytes: int = 32 * 1024 * 1024,
    ) -> None:
        self.policy = policy if policy is not None else RedactionPolicy()
        self.fingerprint = self.policy.fingerprint
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._bytes = 0  # sizes of the cached bodies
        self._cache: OrderedDict[tuple[bytes, str], dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def file_json(self, body: bytes, content_type: str) -> dict[str, Any]:
        digest = hashlib.sha256(body).digest()
        key = (digest, content_type)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        result = redact_body(body, content_type, self.policy)
        shown: dict[str, Any] = {}
        if result.text is not None:
            shown["body"] = result.text
        shown["content_type"] = without_nul(content_type)
        shown["sha256"] = digest.hex()
        shown["size"] = len(body)
        if result.text is not None:
            shown["redacted"] = result.redacted
        else:
            shown["withheld"] = result.withheld
        with self._lock:
            if key not in self._cache:
                self._cache[key] = shown
                self._bytes += len(body)
            while self._cache and (
                len(self._cache) > self._max_entries or self._bytes > self._max_bytes
            ):
                _, dropped = self._cache.popitem(last=False)
                self._bytes -= dropped["size"]
        return shown
