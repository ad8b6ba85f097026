"""A sample track for the devnet: a short, deterministic, playable WAV melody."""

from __future__ import annotations

import io
import math
import struct
import wave

RATE = 44_100
# A few bars of a pentatonic tune: (frequency Hz, beats)
_TUNE = [
    (392.0, 1),
    (440.0, 1),
    (523.3, 2),
    (440.0, 1),
    (392.0, 1),
    (329.6, 2),
    (293.7, 1),
    (329.6, 1),
    (392.0, 2),
    (440.0, 1),
    (392.0, 1),
    (329.6, 2),
]


def sample_wav(seconds: float = 24.0, bpm: int = 120) -> bytes:
    """Stereo 16-bit PCM at 44.1 kHz; about 176 KB a second (4.2 MB for 24 s)."""
    beat = 60.0 / bpm
    frames = bytearray()
    total = int(seconds * RATE)
    t = 0
    while t < total:
        for freq, beats in _TUNE:
            n = int(beats * beat * RATE)
            for i in range(n):
                if t >= total:
                    break
                env = min(1.0, i / 400, (n - i) / 2000)  # soft attack and release
                value = 0.3 * env * math.sin(2 * math.pi * freq * i / RATE)
                value += 0.1 * env * math.sin(2 * math.pi * freq * 2 * i / RATE)
                sample = int(value * 32767)
                frames += struct.pack("<hh", sample, sample)
                t += 1
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(RATE)
        wav.writeframes(bytes(frames))
    return out.getvalue()


def sample_artwork(seed: int, size: int = 1200) -> bytes:
    """A square PNG: two colours from ``seed`` in diagonal bands (cover art for the demo)."""
    import colorsys

    from PIL import Image, ImageDraw

    hue = (seed * 0.173) % 1.0
    one = tuple(int(c * 255) for c in colorsys.hsv_to_rgb(hue, 0.55, 0.95))
    two = tuple(int(c * 255) for c in colorsys.hsv_to_rgb((hue + 0.5) % 1.0, 0.7, 0.45))
    image = Image.new("RGB", (size, size), two)
    draw = ImageDraw.Draw(image)
    band = size // 8
    for i in range(-size, size, 2 * band):
        draw.polygon([(i, 0), (i + band, 0), (i + band + size, size), (i + size, size)], fill=one)
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()
