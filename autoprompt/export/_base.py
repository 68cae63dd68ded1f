"""The exporter extension point: ``render(document) -> str`` for one file format."""

from __future__ import annotations

import abc
from typing import Any, ClassVar

__all__ = ["BaseExporter"]


class BaseExporter(abc.ABC):
    """Turns a prompt document (see :mod:`autoprompt.export`) into the text of one file."""

    name: ClassVar[str]
    suffix: ClassVar[str]

    @abc.abstractmethod
    def render(self, document: dict[str, Any]) -> str:
        """The file's text."""
