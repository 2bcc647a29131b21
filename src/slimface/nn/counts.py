"""MAC and parameter counts as text: ``1234567 -> "1.23M"`` and back (light: no torch, so a run
config's ``search.budget`` is parsed when the config loads)."""

from __future__ import annotations


def format_count(n: float, unit: str = "") -> str:
    """1234567 -> '1.23M' (G/M/K), for tables and logs."""
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


def parse_count(text: str | int | float) -> float:
    """'2.5G' / '300M' / '12k' / 1e9 -> a number; raises ValueError on anything else."""
    if isinstance(text, (int, float)):
        return float(text)
    s = str(text).strip().upper()
    if s.endswith("MACS"):
        s = s[:-4].strip()
    mult = {"G": 1e9, "M": 1e6, "K": 1e3}
    if s and s[-1] in mult:
        return float(s[:-1]) * mult[s[-1]]
    return float(s)


__all__ = ["format_count", "parse_count"]
