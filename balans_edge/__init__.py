"""balans-edge: an edge server for utility metering."""

from balans_edge.hookspecs import hookimpl

__all__ = ["__version__", "hookimpl"]
__version__ = "0.1.0"
