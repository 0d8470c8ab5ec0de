"""Text as the operator commands print it: sizes, ages, and text from dead letters made safe for a
terminal (a message's headers and values are written by whoever produced it, and an escape
sequence printed raw would drive the operator's terminal)."""

from __future__ import annotations


def size_text(size_bytes: int) -> str:
    """`512 B`, `12.3 KB`, `4.0 MB`, `1.2 GB`."""
    size = float(size_bytes)
    for unit in ("B", "KB", "MB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def ago_text(seconds: float) -> str:
    """`42s`, `17m`, `3.5h`, `2.0d`: how long ago, as short as it reads."""
    if seconds < 120:
        return f"{max(seconds, 0):.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86_400:.1f}d"


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
