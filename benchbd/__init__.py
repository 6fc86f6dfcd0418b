"""benchbd: one harness for backdoor attacks and defenses on image classifiers."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("benchbd")
except PackageNotFoundError:  # running from a checkout without installing (PYTHONPATH=.)
    __version__ = "0+unknown"
