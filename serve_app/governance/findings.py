"""The unit every detector produces: one span of one kind of risk."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Finding:
    """One detected span: `text[start:end]` is what the detector matched."""

    detector: str
    start: int
    end: int
    label: str


Detector = Callable[[str], Iterator[Finding]]
