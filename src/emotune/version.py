"""The package version (one place: the package, the server and its OpenAPI page read it)."""

__version__ = "0.1.0"
