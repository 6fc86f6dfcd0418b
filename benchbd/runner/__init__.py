"""Grid expansion and execution, the artifact cache, and result rows."""

from .cache import Cache
from .grid import Cell, Runner
from .results import Results

__all__ = ["Cache", "Cell", "Runner", "Results"]
