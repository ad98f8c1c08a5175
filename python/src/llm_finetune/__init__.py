"""llm-finetune: the Python side of the llm-finetune Helm chart."""

from .core.version import __version__

__all__ = ["__version__"]
