"""The upload media pipeline (media/) on real files made here with PyAV and Pillow:
tones in every listed format, rate and layout transcode to 320 kbps MP3s whose
decoded length matches the source within 50 ms, the preview is 30 s, artwork
comes out at exact sizes; empty, non-audio, corrupt and too-long files and bad
images are MediaErrors (never a raw ffmpeg error)."""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import av
import numpy as np
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


def _lame_tag(data: bytes) -> tuple[int, int, int]:
    """(MP3 frames, encoder delay, padding) from the Xing/Info header's LAME extension:
    after "Info", 4 flag bytes, frames (4), bytes (4), TOC (100), quality (4), the
    9-byte encoder string and 12 bytes of levels and gains, 12 bits each."""
    at = data.find(b"Info")
    assert at > 0, "no Info header: a CBR MP3 from ffmpeg's muxer carries one"
    assert data[at + 4 : at + 8] == b"\x00\x00\x00\x0f"  # frames, bytes, TOC, quality
    frames = int.from_bytes(data[at + 8 : at + 12], "big")
    gapless = data[at + 120 + 21 : at + 120 + 24]
    return frames, gapless[0] << 4 | gapless[1] >> 4, (gapless[1] & 0x0F) << 8 | gapless[2]


def test_the_mp3_header_accounts_for_the_encoder_delay(tmp_path: Path) -> None:
    # 44.1 kHz in, nothing resampled: the sample count must come back exactly
    source = write_tone(tmp_path / "tone.wav", 2.5, codec="pcm_s16le")
    done = transcode(source)
    frames, delay, padding = _lame_tag(done.stream)
    assert delay >= 576  # LAME's own encoder delay, at the least
    raw = frames * 1152  # every MP3 frame decodes to 1152 samples before trimming
    with av.open(io.BytesIO(done.stream), mode="r") as container:
        stream = container.streams.audio[0]
        packets = sum(1 for packet in container.demux(stream) if packet.size)
    assert packets == frames
    assert raw - delay - padding == round(2.5 * SAMPLE_RATE)
    assert decoded(done.stream)[3] * SAMPLE_RATE == raw - delay - padding


def _vorbis(path: Path, seconds: float, rate: int = 44100) -> Path:
    """ffmpeg's own Vorbis encoder (the wheel has no libvorbis): experimental, stereo only."""
    total = round(seconds * rate)
    with av.open(str(path), "w", format="ogg") as out:
        stream = out.add_stream("vorbis", rate=rate, layout="stereo")
        stream.codec_context.options = {"strict": "experimental"}
        for start in range(0, total, 4096):
            count = min(4096, total - start)
            t = (np.arange(count) + start) / rate
            wave = (0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
            frame = av.AudioFrame.from_ndarray(
                np.stack([wave, wave]), format="fltp", layout="stereo"
            )
            frame.sample_rate = rate
            frame.pts = start
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def test_ogg_vorbis(tmp_path: Path) -> None:
    done = transcode(_vorbis(tmp_path / "tone.ogg", 2.5))
    assert done.source_format == "ogg"
    assert abs(done.duration - 2.5) <= TOLERANCE
    assert abs(decoded(done.stream)[3] - 2.5) <= TOLERANCE


def test_a_small_hole_in_a_flac_is_corrupt(tmp_path: Path) -> None:
    # FLAC's parser skips a garbled stretch without an error: only the header's exact
    # sample count shows that a second of the track is missing
    data = bytearray(write_tone(tmp_path / "ok.flac", 20.0).read_bytes())
    hole = len(data) // 20
    middle = len(data) // 2
    data[middle : middle + hole] = random.Random(7).randbytes(hole)
    path = tmp_path / "holed.flac"
    path.write_bytes(bytes(data))
    with pytest.raises(MediaError, match=r"holed\.flac is corrupt"):
        transcode(path)


def _vbr_mp3_without_frame_count(path: Path, quiet: float, loud: float) -> Path:
    """A VBR MP3 with no Xing header that starts silent: ffmpeg estimates its duration
    from the first (smallest) frame's bit rate, several times too long."""
    rate = 44100
    noise = np.random.default_rng(5)
    with av.open(str(path), "w", format="mp3", options={"write_xing": "0"}) as out:
        stream = out.add_stream("libmp3lame", rate=rate, layout="stereo")
        stream.codec_context.qscale = True  # VBR, at LAME's -V0 (global_quality 0)
        total, start = round((quiet + loud) * rate), 0
        while start < total:
            count = min(4096, total - start)
            if start < quiet * rate:
                chunk = np.zeros((2, count), np.float32)
            else:
                chunk = (noise.standard_normal((2, count)) * 0.25).astype(np.float32)
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
            frame.sample_rate = rate
            frame.pts = start
            out.mux(stream.encode(frame))
            start += count
        out.mux(stream.encode(None))
    return path


def test_an_mp3_whose_header_only_estimates_is_judged_by_its_samples(tmp_path: Path) -> None:
    path = _vbr_mp3_without_frame_count(tmp_path / "vbr.mp3", quiet=5.0, loud=15.0)
    assert probe_duration(path) > 60.0  # the estimate is far off...
    done = transcode(path, max_duration=60.0)  # ...so it neither refuses nor corrupts
    assert abs(done.duration - 20.0) <= TOLERANCE
    with pytest.raises(MediaError, match="longer than the limit of 10 s"):
        transcode(path, max_duration=10.0)  # the decoded samples still count


def test_pillows_own_bomb_bound_is_a_media_error() -> None:
    # past twice Image.MAX_IMAGE_PIXELS Pillow raises its own error from open()
    huge = Image.new("1", (15_000, 12_000))
    with pytest.raises(MediaError, match="megapixels"):
        artwork_variants(_png(huge))


def test_sixteen_bit_grey_and_cmyk_artwork() -> None:
    grey = Image.fromarray(np.full((200, 300), 40_000, dtype=np.uint16))
    assert grey.mode.startswith("I")
    pixel = Image.open(io.BytesIO(artwork_variants(_png(grey))[150])).getpixel((75, 75))
    assert isinstance(pixel, tuple) and all(abs(value - 40_000 // 256) <= 3 for value in pixel)
    cmyk = io.BytesIO()
    Image.new("CMYK", (500, 300), (0, 255, 255, 0)).save(cmyk, "JPEG")  # red in ink
    variants = artwork_variants(cmyk.getvalue())
    for size, data in variants.items():
        assert jpeg_size(data) == ("JPEG", (size, size), "RGB")
    red = Image.open(io.BytesIO(variants[150])).getpixel((75, 75))
    assert isinstance(red, tuple) and red[0] > 200 and red[1] < 60 and red[2] < 60
