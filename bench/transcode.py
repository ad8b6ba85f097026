"""Transcode speed of the upload media pipeline: ``python -m bench.transcode``.

A ``--minutes`` (5) stereo 44.1 kHz flac tone is made in a temporary folder, then,
``--rounds`` (3) times and interleaved so that both see the same machine state:

1. decode alone: PyAV reading the flac to samples and dropping them, the floor of
   any transcode (the baseline, measured in this run);
2. transcode: :func:`media.transcode`, the one decoding pass that also resamples
   and encodes both MP3s (the whole track and the 30 s preview) in memory.

Medians are printed: seconds, times real time, and transcode / decode. No node, no
network: this is the CPU cost an upload pays before anything is sent. Progress to
stderr, figures to stdout.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import av

from media import transcode
from tests.audio import write_tone


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def decode_only(path: Path) -> tuple[float, int]:
    """Seconds to decode every audio frame of ``path``, and the samples decoded."""
    t0 = time.perf_counter()
    samples = 0
    with av.open(str(path), mode="r") as container:
        for frame in container.decode(container.streams.audio[0]):
            samples += frame.samples
    return time.perf_counter() - t0, samples


def transcode_once(path: Path) -> tuple[float, int, int]:
    """Seconds for :func:`media.transcode`, and the sizes of its stream and preview."""
    t0 = time.perf_counter()
    done = transcode(path)
    return time.perf_counter() - t0, len(done.stream), len(done.preview)


def main(minutes: float, rounds: int) -> None:
    seconds = minutes * 60
    with tempfile.TemporaryDirectory() as tmp:
        song = write_tone(Path(tmp) / "song.flac", seconds, rate=44100, layout="stereo")
        _say(f"{song.name}: {minutes:g} min stereo 44.1 kHz, {song.stat().st_size / 1e6:.1f} MB")
        decodes: list[float] = []
        transcodes: list[float] = []
        sizes = (0, 0)
        for r in range(rounds):
            decoded, samples = decode_only(song)
            if samples != round(seconds * 44100):
                raise RuntimeError(f"decoded {samples} samples of {round(seconds * 44100)}")
            decodes.append(decoded)
            took, stream, preview = transcode_once(song)
            transcodes.append(took)
            sizes = (stream, preview)
            _say(f"  round {r + 1}: decode {decodes[-1]:.2f} s, transcode {transcodes[-1]:.2f} s")
    dec, tra = statistics.median(decodes), statistics.median(transcodes)
    stream, preview = sizes
    print(f"transcode, a {minutes:g}-minute stereo 44.1 kHz flac ({rounds} rounds, median)")
    print(f"  decode alone (baseline)           {dec:7.2f} s  ({seconds / dec:6.0f}x real time)")
    print(
        f"  transcode (stream + preview MP3)  {tra:7.2f} s  ({seconds / tra:6.0f}x real time)"
        f"  {tra / dec:5.1f}x the decode"
    )
    print(
        f"  output: stream {stream / 1e6:.1f} MB ({stream * 8 / seconds / 1000:.0f} kbps), "
        f"preview {preview / 1e6:.2f} MB"
    )


def arguments(doc: str) -> argparse.Namespace:
    """``--minutes``, ``--rounds`` and ``--quick`` (bench.upload takes the same)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="length of the tone")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (median printed)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 20 s, 1 round")
    args = parser.parse_args()
    if args.quick:
        args.minutes, args.rounds = 1 / 3, 1
    if not 0 < args.minutes <= 60 or args.rounds < 1:
        parser.error("--minutes in (0, 60], --rounds >= 1")
    return args


def cli() -> None:
    args = arguments(__doc__ or "")
    main(args.minutes, args.rounds)


if __name__ == "__main__":
    cli()
