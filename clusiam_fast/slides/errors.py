"""What a slide read raises, whatever the backend: one file both the readers (``base.py``)
and the tile checks (``integrity.py``) import, so neither imports the other for its errors."""

from __future__ import annotations

from collections.abc import Sequence


class SlideError(RuntimeError):
    """A slide cannot be opened or read; the message names the file."""


class MissingMppError(SlideError):
    """The slide's metadata has no pixel size and none was given."""


class OffSlideError(SlideError):
    """A patch's field of view lies outside level 0 of its slide (see :meth:`SlideReader.off_slide`)."""


class CorruptTileError(SlideError):
    """Tile data of the slide is damaged where a read needs it (see ``integrity.py``).

    ``region`` is the read's level-0 (x, y, width, height); ``level`` the pyramid level read.
    """

    def __init__(self, message: str, region: Sequence[int] = (0, 0, 0, 0), level: int = 0) -> None:
        super().__init__(message)
        self.region = tuple(int(v) for v in region)
        self.level = int(level)

    def __reduce__(self):  # crosses process boundaries with its fields
        return type(self), (str(self), self.region, self.level)
