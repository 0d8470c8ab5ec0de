"""Sizes and ages as the operator commands print them."""

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
