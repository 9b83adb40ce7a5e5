"""The package version (a leaf module: data/ writes it into prepared metadata without importing the package)."""

__version__ = "0.2.0"
