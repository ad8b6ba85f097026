"""The one error of :mod:`media`."""


class MediaError(ValueError):
    """A file this pipeline refuses: empty, not audio (or not an image), corrupt,
    too long or too big. The message names the file and says why."""
