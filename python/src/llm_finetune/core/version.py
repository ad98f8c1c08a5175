"""The installed package version (``llm_finetune.__version__``)."""

try:
    from importlib.metadata import PackageNotFoundError, version

    __version__ = version("llm-finetune")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"
