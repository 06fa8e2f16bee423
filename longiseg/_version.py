"""The library version (one place; the package and every model spec read it)."""

__version__ = "0.3.28"
