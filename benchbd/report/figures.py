"""Shared matplotlib plumbing for every figure: a headless pyplot and saving a PNG."""
from __future__ import annotations

from pathlib import Path

from ..errors import BenchbdError


def pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BenchbdError("figures need matplotlib: pip install 'benchbd[figures]'") from None
    return plt


def save(fig, out: Path | str, title: str = "") -> Path:
    """Title, tight layout, a 150-dpi PNG at `out` (folders made), figure closed."""
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=150)
    pyplot().close(fig)
    return out
