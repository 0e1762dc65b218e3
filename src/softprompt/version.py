"""The package version (its own module: low-level modules read it without importing the package)."""

__version__ = "0.1.0"
