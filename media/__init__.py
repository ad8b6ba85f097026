"""Uploads' media: any common audio file to a stream file and a preview
(:mod:`media.audio`, PyAV: its wheels carry ffmpeg), and artwork to square
JPEGs (:mod:`media.artwork`, Pillow). Synchronous and CPU-bound: callers run
them in a worker thread. Every refusal is a :class:`MediaError` whose message
a user can act on, raised before anything is uploaded or signed."""

from media.artwork import ARTWORK_SIZES, MAX_PIXELS, artwork_variants
from media.audio import (
    BIT_RATE,
    PREVIEW_SECONDS,
    SAMPLE_RATE,
    Transcoded,
    probe_duration,
    transcode,
)
from media.errors import MediaError

__all__ = [
    "ARTWORK_SIZES",
    "BIT_RATE",
    "MAX_PIXELS",
    "PREVIEW_SECONDS",
    "SAMPLE_RATE",
    "MediaError",
    "Transcoded",
    "artwork_variants",
    "probe_duration",
    "transcode",
]
