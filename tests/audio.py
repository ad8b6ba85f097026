"""Real audio and image files for tests, made with PyAV and Pillow (no fixtures on disk)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
from PIL import Image

FRAME = 4096  # samples per frame handed to the encoder (it re-frames as it needs)


def write_tone(
    path: Path,
    seconds: float,
    *,
    codec: str = "flac",
    container: str | None = None,
    rate: int = 44100,
    layout: str = "stereo",
    frequency: float = 440.0,
) -> Path:
    """A sine tone of ``seconds`` (exactly ``round(seconds * rate)`` samples)
    encoded with ``codec`` into ``path`` (container from the suffix unless given)."""
    channels = 2 if layout == "stereo" else 1
    total = round(seconds * rate)
    t = np.arange(total) / rate
    wave = (0.3 * np.sin(2 * np.pi * frequency * t) * 32767).astype(np.int16)
    samples = np.tile(wave, (channels, 1))
    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        assert isinstance(stream, av.AudioStream)
        for start in range(0, total, FRAME):
            chunk = np.ascontiguousarray(samples[:, start : start + FRAME].T.reshape(1, -1))
            frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout=layout)
            frame.sample_rate = rate
            frame.pts = start
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def write_image(path: Path, size: tuple[int, int], *, mode: str = "RGB") -> Path:
    """A gradient picture of ``size`` (width, height), saved by its suffix's format."""
    width, height = size
    x = np.linspace(0, 255, width, dtype=np.uint8)
    y = np.linspace(0, 255, height, dtype=np.uint8)
    blue = x[None, :] // 2 + y[:, None] // 2
    rgb = np.stack(np.broadcast_arrays(x[None, :], y[:, None], blue), -1)
    image = Image.fromarray(rgb.astype(np.uint8), "RGB")
    if mode != "RGB":
        image = image.convert(mode)
    image.save(path)
    return path
