"""Audio: any common file to a 320 kbps MP3 stream file and a 30-second preview.

One decoding pass with PyAV (ffmpeg in its wheel: wav, flac, aiff, mp3,
m4a/aac, ogg/vorbis, opus and the rest ffmpeg reads). The first audio
stream is decoded, resampled to 44.1 kHz stereo (a mono source is played on
both channels) and encoded twice with LAME at a constant 320 kbps: the whole
track, and its first ``preview_seconds``. The MP3s carry a LAME header with
the encoder's delay and padding, so a decoder that reads it (ffmpeg, browsers)
gives back exactly the source's number of samples.

The duration is counted from decoded samples, not read from the container
(whose header may lie). Refused, with a :class:`MediaError`: an empty file,
one ffmpeg cannot open or finds no audio in, one whose decoding fails or
yields less than its header promises (corrupt), one longer than
``max_duration`` (checked from the header first, then as it decodes).

How far the header is believed depends on where its duration comes from. A
lossless or PCM header's sample count is exact, and FLAC's parser skips a
garbled stretch without an error, so such a file that decodes more than
:data:`LOSSLESS_SLACK` short of its header is corrupt. A raw MP3 or ADTS AAC
file without a frame count only has ffmpeg's estimate from the first frame's
bit rate (a VBR file that starts quietly is "estimated" at several times its
length), so there the header is used for progress and for nothing else.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import av
import av.error
import numpy as np

from media.errors import MediaError

SAMPLE_RATE: Final = 44_100
LAYOUT: Final = "stereo"
BIT_RATE: Final = 320_000
PREVIEW_SECONDS: Final = 30.0
CODEC: Final = "libmp3lame"
SHORTFALL: Final = 0.9  # lossy: decoding less than this share of the header's duration: corrupt
LOSSLESS_SLACK: Final = 0.1  # seconds: a lossless file's last block may be short, never more
# Demuxers whose duration, lacking a Xing/VBRI frame count, is a bit-rate estimate.
_ESTIMATED: Final = frozenset({"mp3", "aac"})


@dataclass(frozen=True)
class Transcoded:
    stream: bytes  # MP3, 320 kbps CBR, 44.1 kHz stereo: the whole track
    preview: bytes  # the same, the first min(preview_seconds, duration) seconds
    duration: float  # seconds of the source, from its decoded samples
    source_format: str  # ffmpeg's name of the source's container, e.g. "flac"


def _check_file(source: Path) -> None:
    try:
        size = source.stat().st_size
    except OSError as exc:
        raise MediaError(f"{source.name} cannot be read: {exc.strerror or exc}") from None
    if size == 0:
        raise MediaError(f"{source.name} is empty")


def _open(source: Path) -> av.container.InputContainer:
    _check_file(source)
    try:
        container = av.open(str(source), mode="r")
    except (av.error.FFmpegError, OSError, UnicodeDecodeError):
        raise MediaError(f"{source.name} is not an audio file ffmpeg can read") from None
    if not container.streams.audio:
        container.close()
        raise MediaError(f"{source.name} is not an audio file (ffmpeg found no audio stream)")
    return container


def _header_duration(container: av.container.InputContainer) -> float | None:
    stream = container.streams.audio[0]
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000
    return None


def probe_duration(source: Path) -> float:
    """The duration a file's header claims, in seconds (0.0 if it names none);
    MediaError if it is not audio at all."""
    with _open(source) as container:
        return _header_duration(container) or 0.0


class _Encoder:
    """LAME into an in-memory MP3 file."""

    def __init__(self) -> None:
        self.buffer = io.BytesIO()
        self.container = av.open(self.buffer, mode="w", format="mp3")
        stream = self.container.add_stream(CODEC, rate=SAMPLE_RATE, layout=LAYOUT)
        assert isinstance(stream, av.AudioStream)
        stream.bit_rate = BIT_RATE
        self.stream = stream
        self.samples = 0

    def encode(self, frame: av.AudioFrame | None) -> None:
        if frame is not None:
            frame.pts = self.samples
            self.samples += frame.samples
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def finish(self) -> bytes:
        self.encode(None)
        self.container.close()
        return self.buffer.getvalue()


def _head(frame: av.AudioFrame, samples: int) -> av.AudioFrame:
    """The first ``samples`` of a resampled (planar float, stereo) frame."""
    planes = frame.to_ndarray()[:, :samples].astype(np.float32, copy=False)
    head = av.AudioFrame.from_ndarray(np.ascontiguousarray(planes), format=frame.format.name,
                                      layout=LAYOUT)  # fmt: skip
    head.sample_rate = SAMPLE_RATE
    return head


def _frames(container: av.container.InputContainer, name: str) -> Iterator[av.AudioFrame]:
    stream = container.streams.audio[0]
    try:
        for packet in container.demux(stream):
            yield from packet.decode()
    except av.error.FFmpegError as exc:
        raise MediaError(f"{name} is corrupt: decoding failed ({exc})") from None


def transcode(
    source: Path,
    *,
    max_duration: float = 3600.0,
    preview_seconds: float = PREVIEW_SECONDS,
    progress: Callable[[float], None] | None = None,
) -> Transcoded:
    """The stream file, the preview and the duration of ``source`` (see the module doc)."""
    source = Path(source)
    name = source.name
    with _open(source) as container:
        claimed = _header_duration(container)
        lossless = container.streams.audio[0].codec_context.codec.lossless
        exact = lossless or container.format.name not in _ESTIMATED
        if exact and claimed is not None and claimed > max_duration:
            raise MediaError(
                f"{name} is {claimed:.0f} s long: over the limit of {max_duration:.0f} s"
            )
        fmt = container.format.name
        resampler = av.AudioResampler(format="fltp", layout=LAYOUT, rate=SAMPLE_RATE)
        whole, preview = _Encoder(), _Encoder()
        preview_samples = round(preview_seconds * SAMPLE_RATE)
        seconds = 0.0
        shown = 0.0

        def take(frames: list[av.AudioFrame]) -> None:
            for out in frames:
                whole.encode(out)
                room = preview_samples - preview.samples
                if room > 0:
                    preview.encode(out if out.samples <= room else _head(out, room))

        for frame in _frames(container, name):
            if frame.sample_rate:
                seconds += frame.samples / frame.sample_rate
            if seconds > max_duration:
                raise MediaError(f"{name} is longer than the limit of {max_duration:.0f} s")
            try:
                take(resampler.resample(frame))
            except (av.error.FFmpegError, ValueError) as exc:
                raise MediaError(f"{name} is corrupt: {exc}") from None
            if progress is not None and claimed and seconds / claimed - shown >= 0.01:
                shown = min(1.0, seconds / claimed)
                progress(shown)
        take(resampler.resample(None))
    if seconds <= 0:
        raise MediaError(f"{name} is not an audio file (nothing in it decodes as sound)")
    if (
        claimed
        and exact
        and seconds < (claimed - LOSSLESS_SLACK if lossless else SHORTFALL * claimed)
    ):
        raise MediaError(
            f"{name} is corrupt: it decodes to {seconds:.1f} s of the {claimed:.1f} s "
            "its header claims"
        )
    if progress is not None:
        progress(1.0)
    return Transcoded(
        stream=whole.finish(), preview=preview.finish(), duration=seconds, source_format=fmt
    )
