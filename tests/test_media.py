"""The upload media pipeline (media/) on real files made here with PyAV and Pillow:
tones in every listed format, rate and layout transcode to 320 kbps MP3s whose
decoded length matches the source within 50 ms, the preview is 30 s, artwork
comes out at exact sizes; empty, non-audio, corrupt and too-long files and bad
images are MediaErrors (never a raw ffmpeg error)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import av
import pytest
from PIL import Image

from media import (
    ARTWORK_SIZES,
    BIT_RATE,
    PREVIEW_SECONDS,
    SAMPLE_RATE,
    MediaError,
    artwork_variants,
    probe_duration,
    transcode,
)
from tests.audio import write_image, write_tone

TOLERANCE = 0.05  # seconds

# suffix, codec, container, sample rate, layout
FORMATS = [
    ("wav", "pcm_s16le", None, 44100, "stereo"),
    ("flac", "flac", None, 48000, "stereo"),
    ("aiff", "pcm_s16be", "aiff", 22050, "mono"),
    ("mp3", "libmp3lame", None, 44100, "mono"),
    ("m4a", "aac", "ipod", 48000, "stereo"),
    ("ogg", "libopus", "ogg", 48000, "mono"),
    ("opus", "libopus", "ogg", 48000, "stereo"),
]


def decoded(data: bytes) -> tuple[str, int, int, float, int]:
    """codec, rate, channels, seconds from decoded samples, the stream's bit rate."""
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.audio[0]
        samples = sum(int(frame.samples) for frame in container.decode(stream))
        return (
            stream.codec_context.name,
            stream.rate,
            stream.channels,
            samples / stream.rate,
            stream.bit_rate or 0,
        )


@pytest.mark.parametrize(("suffix", "codec", "container", "rate", "layout"), FORMATS)
def test_every_format_transcodes(
    tmp_path: Path, suffix: str, codec: str, container: str | None, rate: int, layout: str
) -> None:
    seconds = 2.5
    source = write_tone(tmp_path / f"tone.{suffix}", seconds, codec=codec, container=container,
                        rate=rate, layout=layout)  # fmt: skip
    seen: list[float] = []
    done = transcode(source, progress=seen.append)
    assert abs(done.duration - seconds) <= TOLERANCE
    assert abs(probe_duration(source) - seconds) <= TOLERANCE
    name, out_rate, channels, out_seconds, bit_rate = decoded(done.stream)
    assert name.startswith("mp3") and out_rate == SAMPLE_RATE and channels == 2
    assert abs(out_seconds - done.duration) <= TOLERANCE
    assert bit_rate == BIT_RATE  # constant: every frame header says 320 kbps
    # a short track's preview is all of it
    assert abs(decoded(done.preview)[3] - done.duration) <= TOLERANCE
    assert seen and seen[-1] == 1.0 and seen == sorted(seen)


def test_the_preview_is_thirty_seconds(tmp_path: Path) -> None:
    source = write_tone(tmp_path / "long.flac", 37.25, rate=44100)
    done = transcode(source)
    assert abs(decoded(done.stream)[3] - 37.25) <= TOLERANCE
    assert abs(decoded(done.preview)[3] - PREVIEW_SECONDS) <= TOLERANCE
    shorter = transcode(source, preview_seconds=10.0)
    assert abs(decoded(shorter.preview)[3] - 10.0) <= TOLERANCE


def test_refusals(tmp_path: Path) -> None:
    flac = write_tone(tmp_path / "ok.flac", 6.0).read_bytes()
    picture = write_image(tmp_path / "p.png", (40, 40)).read_bytes()
    cases = {
        "empty.wav": (b"", "is empty"),
        "notes.txt": (b"just some words\n" * 500, "not an audio file"),
        "picture.flac": (picture, "not an audio file"),
        "noise.mp3": (os.urandom(40_000), "not an audio file"),
        "header.flac": (flac[:60], "not an audio file"),
        "half.flac": (flac[: len(flac) // 2], "corrupt"),
        "middle.flac": (flac[:3000] + os.urandom(len(flac) - 6000) + flac[-3000:], "corrupt"),
    }
    for name, (data, why) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(MediaError, match=why) as caught:
            transcode(path)
        assert name in str(caught.value)
    with pytest.raises(MediaError, match="over the limit of 5 s"):
        transcode(tmp_path / "ok.flac", max_duration=5.0)
    with pytest.raises(MediaError, match="cannot be read"):
        transcode(tmp_path / "missing.wav")


def jpeg_size(data: bytes) -> tuple[str | None, tuple[int, int], str]:
    image = Image.open(io.BytesIO(data))
    return image.format, image.size, image.mode


def test_artwork_sizes(tmp_path: Path) -> None:
    wide = write_image(tmp_path / "wide.png", (900, 500), mode="RGBA")
    tiny = write_image(tmp_path / "tiny.gif", (64, 40), mode="P")
    grey = write_image(tmp_path / "grey.jpg", (1200, 1300), mode="L")
    for source in (wide, tiny, grey, wide.read_bytes()):
        variants = artwork_variants(source)
        assert sorted(variants) == list(ARTWORK_SIZES)
        for size, data in variants.items():
            assert jpeg_size(data) == ("JPEG", (size, size), "RGB")


def test_artwork_follows_exif_orientation_and_flattens_alpha(tmp_path: Path) -> None:
    # left half red, right half blue; EXIF 6 says "rotate 90 degrees clockwise to view"
    image = Image.new("RGB", (400, 200), (255, 0, 0))
    image.paste((0, 0, 255), (200, 0, 400, 200))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "turned.jpg"
    image.save(path, exif=exif)
    shown = Image.open(io.BytesIO(artwork_variants(path)[150])).convert("RGB")
    top, bottom = shown.getpixel((75, 5)), shown.getpixel((75, 144))
    assert isinstance(top, tuple) and isinstance(bottom, tuple)
    assert top[0] > 200 and top[2] < 60  # red on top once turned upright
    assert bottom[2] > 200 and bottom[0] < 60
    clear = Image.new("RGBA", (300, 300), (0, 0, 0, 0))
    white = Image.open(io.BytesIO(artwork_variants(_png(clear))[150])).convert("RGB")
    pixel = white.getpixel((75, 75))
    assert isinstance(pixel, tuple) and min(pixel) > 245


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def test_bad_images(tmp_path: Path) -> None:
    good = write_image(tmp_path / "ok.png", (300, 300)).read_bytes()
    for data, why in (
        (b"", "empty"),
        (b"not an image at all" * 20, "not an image"),
        (good[:300], "corrupt"),
        (write_tone(tmp_path / "t.wav", 0.5).read_bytes(), "not an image"),
    ):
        with pytest.raises(MediaError, match=why):
            artwork_variants(data)
    # over the pixel bound: refused from the header, before decoding
    huge = Image.new("1", (10_000, 6_000))
    with pytest.raises(MediaError, match="megapixels"):
        artwork_variants(_png(huge))
