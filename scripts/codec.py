"""Encode an audio file to DAC codes and decode them back: the main job, from the command line.

    python scripts/codec.py --model descript/dac_44khz --input speech.wav --output-dir out/

An example on the package's public API (`load_model`, `encode`, `decode`). --model takes a folder or Hub id of this
package's format, a transformers `DacModel` checkpoint (such as descript/dac_44khz), converted on the fly, or an
original release checkpoint (.pth). Without --input a 5 s test signal (a chirp and a chord) is used. Writes
<name>.codes.safetensors and <name>.decoded.wav and prints the shapes, the bitrate and the reconstruction SNR.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import soundfile
import torch

from dac_codec.tools import loading
from dac_codec.tools.command import ArgumentParser, run_command


def test_signal(sample_rate: int, seconds: float = 5.0) -> np.ndarray:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    chirp = np.sin(2 * np.pi * (100 * t + 400 * t**2)) * (0.5 + 0.5 * np.sin(2 * np.pi * 0.7 * t))
    chord = sum(np.sin(2 * np.pi * f * t) for f in (220.0, 277.2, 329.6)) / 3
    return (0.4 * chirp + 0.3 * chord).astype(np.float32)


def main(argv=None) -> int:
    return run_command(lambda: _codec(argv))


def _codec(argv) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="folder or Hub id")
    parser.add_argument("--input", help="audio file (wav, flac, ogg, mp3); a test signal if left out")
    parser.add_argument("--output-dir", default="out")
    parser.add_argument("--n-quantizers", type=int, help="codebooks to use (bitrate); all by default")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    args = parser.parse_args(argv)

    device, _ = loading.resolve_device(args.device)
    model = loading.load_model(args.model).to(device)
    rate = model.config.sampling_rate
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if args.input:
        name, source = Path(args.input).stem, args.input
        original, original_rate = soundfile.read(args.input, dtype="float32", always_2d=True)
        original = torch.from_numpy(original.mean(axis=1))
    else:
        name, original_rate = "test_signal", rate
        original = torch.from_numpy(test_signal(rate))
        source = original

    start = time.perf_counter()
    zq, s = model.encode(source, sample_rate=None if args.input else rate, n_quantizers=args.n_quantizers)
    encoded = time.perf_counter()
    waveform = model.decode(s=s)
    decoded = time.perf_counter()

    model.save_tensor(s, output_dir / f"{name}.codes.safetensors")
    model.waveform_to_audiofile(waveform, output_dir / f"{name}.decoded.wav")
    seconds = original.shape[-1] / original_rate
    bitrate = s.shape[1] * math.log2(model.config.codebook_size) * model.config.frame_rate
    print(f"input: {seconds:.2f} s at {original_rate} Hz; model: {rate} Hz, hop {model.config.hop_length}")
    print(f"codes: {tuple(s.shape)} ({bitrate / 1000:.1f} kbps); decoded: {tuple(waveform.shape)}")
    print(f"encode {encoded - start:.2f} s, decode {decoded - encoded:.2f} s on {device}")
    if original_rate == rate:
        n = min(original.shape[-1], waveform.shape[-1])
        reference, error = original[:n], original[:n] - waveform[0, 0, :n].cpu()
        snr = 10 * torch.log10(reference.pow(2).sum() / error.pow(2).sum().clamp_min(1e-20))
        print(f"reconstruction SNR: {snr:.1f} dB")
    print(f"wrote {output_dir / (name + '.codes.safetensors')} and {output_dir / (name + '.decoded.wav')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
