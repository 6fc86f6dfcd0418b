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
    """Title, tight layout, a 150-dpi image at `out` (folders made), figure closed; returns the
    path written: `out` itself, with `.png` added when it has no extension."""
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out = Path(out)
    if not out.suffix:
        out = out.with_name(out.name + ".png")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=150)
    except OSError as exc:
        raise BenchbdError(f"cannot write '{out}': {exc.strerror or exc}") from None
    except ValueError as exc:  # an extension matplotlib has no writer for
        raise BenchbdError(f"cannot write '{out}': {exc}") from None
    finally:
        pyplot().close(fig)
    return out
