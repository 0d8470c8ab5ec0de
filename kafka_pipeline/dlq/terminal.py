"""Text from dead letters made safe for a terminal: a message's headers and values are written by
whoever produced it, and an escape sequence printed raw would drive the operator's terminal."""

from __future__ import annotations


def printable(text: str) -> str:
    """`text` with every character that is not printable (control characters, escape codes, C1
    controls, bidi overrides, lone surrogates) written as a `\\uXXXX` escape; spaces are kept.

    The escape is JSON's own, so applied to a JSON document it stays valid JSON (outside
    strings JSON holds only printable ASCII and whitespace, and newlines between lines are
    not part of a document printed one per line)."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch == " " else _escape(ch) for ch in text)


def _escape(ch: str) -> str:
    code = ord(ch)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    high, low = divmod(code - 0x10000, 0x400)  # a UTF-16 pair, as JSON writes it
    return f"\\u{0xD800 + high:04x}\\u{0xDC00 + low:04x}"
