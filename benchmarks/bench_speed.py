"""Speed of our DAC encode / decode next to the reference package and transformers' DacModel, same weights and input.

    .venv/bin/python benchmarks/bench_speed.py                      # 44khz, 10 s, encode + decode, every impl, fp32
    .venv/bin/python benchmarks/bench_speed.py --presets 44khz 24khz 16khz --seconds 10 60 --repeats 5
    .venv/bin/python benchmarks/bench_speed.py --dtype bfloat16 --threads 2 --json speed.json
    .venv/bin/python benchmarks/bench_speed.py --seconds 2 --repeats 1  # quick check

What is measured, per preset, length, operation and implementation:
- ours: `DacModel.encode(x, sample_rate=sr)` / `DacModel.decode(s=codes)` with the model's default chunk sizes, loaded
  from a converted folder with `AutoModel.from_pretrained(folder, trust_remote_code=True)`.
- ours+bf16: the same, after `model.to(torch.bfloat16)`, with bf16 audio, whatever --dtype says: our reduced-precision
  path beside the fp32 reference. With it, a fresh process (`--agreement`) also compares its codes with our float32
  model's on 10 s of speech (samples/speech.flac) and of the music-like signal, and the audio that both decode from
  the float32 codes (SNR).
- ours+medium: ours (float32 weights and audio) under `torch.set_float32_matmul_precision("medium")`, which lets
  the residual units' dilated convolutions take bf16 products summed in float32 on CPUs that take them (AMX; the
  layers that decide codes stay float32); its codes and audio are compared with float32's likewise.
- reference (descript-audio-codec, `dac.model.DAC`): `encode(preprocess(x, sr))` /
  `decode(quantizer.from_codes(codes)[0])` under `torch.no_grad()`; the code-to-latent lookup is timed with decode, as
  ours and transformers' include it.
- reference+jemalloc: the reference with jemalloc preloaded (LD_PRELOAD, MALLOC_CONF=dirty_decay_ms:-1,
  muzzy_decay_ms:-1), the fastest it gets without code changes: without it the reference spends much of its time
  page-faulting fresh memory for every layer. Skipped (with a note) where no libjemalloc.so.2 is installed.
- ours+jemalloc: ours likewise (not run by default): what glibc's malloc costs our calls, whose convolutions still
  allocate their outputs (a 10 s encode at 44.1 kHz page-faults ~150k times under glibc).
- transformers: `DacModel.encode(x).audio_codes` / `DacModel.decode(audio_codes=codes).audio_values` under no_grad.

Same weights: a full-size reference model with a fixed seed and perturbed alphas, biases and weight-norm gains
(`dac_codec.tools.random_weights`, as the tests have it) is saved as a release checkpoint, converted to our folder, and
our state_dict is loaded strictly into transformers' DacModel. Before timing, the three must give identical codes on 1 s
of audio (a warning is printed otherwise). Same input: a deterministic chirp + chord + noise, rounded up to whole code
frames so that transformers (which does not pad) gets exactly the samples the others get. Decode input: the codes that
OUR model gives for that same audio, computed once per preset and length before the timed runs and saved to a temp file.

Every measurement runs in a fresh process (`--worker`): load the model, build the input, two untimed warm-up calls
on 1 s (WARMUP_CALLS: the allocator settles), then ONE timed call. The worker reports wall time and peak RSS
(`getrusage(RUSAGE_SELF).ru_maxrss`, the whole process: imports, weights, input and the call). The parent process
never imports torch: a child started by `subprocess` inherits the parent's ru_maxrss through exec, so a parent
holding models would inflate every reading.
The table gives the median time of --repeats runs (runs are interleaved across implementations), the speed-up
against the reference and the jemalloc reference (their time / time), the largest peak RSS of the runs, the median
count of page faults in the timed call (fresh memory costs one per 4 KB; in a VM each can cost microseconds), and the
achieved GFLOP/s from the convolution work per second of audio in /work/shared/reference/FACTS.md, also as a share of
the machine's two peaks, measured first in a fresh process of their own (`--ceiling`, same dtype and threads):
- conv peak: the best GFLOP/s of the decoder's main convolution shapes, run as our model's streams run them
  (channels-last conv2d over time-major input), on 4M-activation tiles: the floor of a convolution-bound codec here.
- FMA peak: the best GFLOP/s of cache-resident GEMMs (MKL's square ones and oneDNN's pointwise convolutions: dense
  streams of fused multiply-adds, as near the FMA units' peak as a library gets), a 2048^2 matmul and the conv
  probes (MKL does not run every CPU's widest units; a rate that any kernel reaches, the FMA units reach).
The CPU's model and the flags that decide which kernels run (vector width, FMA, bf16 and AMX support) are printed
with them, so that figures from different machines can be told apart. No timing is asserted anywhere.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEED = 0
WARMUP_SECONDS = 1.0
# Two: glibc's malloc serves large blocks from fresh mappings until it has freed some, so a process's second call
# still page-faults its memory in (a 1 s encode at 44.1 kHz: 8k faults on the second call, none from the third).
WARMUP_CALLS = 2
IMPLS = ("ours", "ours+bf16", "ours+medium", "ours+jemalloc", "reference", "reference+jemalloc", "transformers")
# The reference with jemalloc preloaded and its decay off: the fastest the reference gets without code changes.
JEMALLOC_PATHS = ("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
                  "/usr/lib64/libjemalloc.so.2", "/usr/local/lib/libjemalloc.so.2")
JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"
# Convolutions that the conv peak is measured on: (C_in, C_out, kernel, dilation, time steps), time-major, each a
# 4M-element tile of the decoder, plus a square matmul.
CEILING_CONVS = ((96, 96, 7, 1, 43690), (192, 192, 7, 9, 21845), (384, 384, 7, 3, 10922), (768, 768, 7, 1, 5461))
CEILING_MATMUL = 2048
FMA_GEMMS = (128, 256, 384)  # square GEMMs that stay in L2, repeated: the FMA peak (with the pointwise convs)
FMA_POINTWISE = ((256, 2048), (512, 2048))  # (channels, time steps): L2-sized GEMMs run by oneDNN, not MKL
AGREEMENT_SECONDS = 10.0  # speech and music-like audio on which bf16 codes are compared with float32's
# CPU flags that decide which kernels oneDNN and MKL run
KERNEL_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
                "amx_int8", "avx_vnni", "asimd", "sve", "sve2", "bf16", "i8mm")
OPS = ("encode", "decode")
# sample rate, hop length, GFLOP per second of audio (encoder, decoder convolutions; FACTS.md)
PRESET_INFO = {
    "44khz": dict(sample_rate=44100, hop=512, gflop={"encode": 61.3, "decode": 138.6}),
    "24khz": dict(sample_rate=24000, hop=320, gflop={"encode": 36.8, "decode": 83.4}),
    "16khz": dict(sample_rate=16000, hop=320, gflop={"encode": 24.6, "decode": 55.6}),
}


# ----------------------------------------------------------------------------------------------------------------
# Shared helpers (no torch at import time)
def num_samples(preset: str, seconds: float) -> int:
    """`seconds` of audio rounded up to whole code frames."""
    info = PRESET_INFO[preset]
    return math.ceil(seconds * info["sample_rate"] / info["hop"]) * info["hop"]


def make_audio(sample_rate: int, length: int, seed: int = SEED):
    """(1, 1, length) float32: a 4 s repeating chirp with an envelope, a chord and some noise.

    Filled block by block into one preallocated tensor, so a long signal is never held in any other form."""
    import torch

    audio = torch.empty(1, 1, length)
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, length, sample_rate):
        t = torch.arange(start, min(length, start + sample_rate), dtype=torch.float64) / sample_rate
        sweep = t % 4.0
        chirp = torch.sin(2 * math.pi * (100 * sweep + 500 * sweep**2)) * (0.5 + 0.5 * torch.sin(2 * math.pi * 1.7 * t))
        chord = sum(torch.sin(2 * math.pi * f * t) for f in (220.0, 277.2, 329.6)) / 3
        noise = torch.randn(t.shape, generator=generator, dtype=torch.float64)
        audio[0, 0, start : start + t.shape[0]] = (0.4 * chirp + 0.3 * chord + 0.05 * noise).float()
    return audio


def speech_audio(sample_rate: int, length: int):
    """(1, 1, length) float32: samples/speech.flac at `sample_rate`, looped to `length` samples."""
    import numpy as np
    import soundfile
    import soxr
    import torch

    speech, rate = soundfile.read(ROOT / "samples" / "speech.flac", dtype="float32")
    speech = torch.from_numpy(soxr.resample(speech, rate, sample_rate).astype(np.float32))
    return speech.repeat(-(-length // speech.shape[-1]))[:length][None, None]


def transformers_model(ours):
    """transformers' DacModel with our model's weights (our parameter names are transformers' names)."""
    import transformers
    from torch.nn.utils import parametrize

    c = ours.config
    hf = transformers.DacModel(transformers.DacConfig(
        encoder_hidden_size=c.encoder_dim, downsampling_ratios=list(c.encoder_rates),
        decoder_hidden_size=c.decoder_dim, n_codebooks=c.n_codebooks, codebook_size=c.codebook_size,
        codebook_dim=c.codebook_dim, sampling_rate=c.sampling_rate,
    ))
    # transformers 5.x builds plain convolutions; should a version carry weight-norm parametrizations, fold them.
    for module in hf.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight")
    assert hf.config.hidden_size == c.latent_dim and list(hf.config.upsampling_ratios) == list(c.decoder_rates)
    result = hf.load_state_dict(ours.state_dict(), strict=True)  # raises on any missing or unexpected key
    assert not result.missing_keys and not result.unexpected_keys
    return hf.eval()


def prepare(spec: dict) -> dict:
    """Writes the reference checkpoint, our folder, transformers' folder and the decode codes into spec["folder"]."""
    import torch
    import transformers

    from dac_codec.tools.convert import write_model_folder
    from dac_codec.tools.loading import model_from_original
    from dac_codec.tools.random_weights import reference_model

    folder, preset = Path(spec["folder"]), spec["preset"]
    sample_rate = PRESET_INFO[preset]["sample_rate"]
    folder.mkdir(parents=True, exist_ok=True)
    reference = reference_model(preset, SEED)
    reference.save(str(folder / "reference.pth"), package=False)
    ours = model_from_original(str(folder / "reference.pth"))
    write_model_folder(ours, folder / "ours")
    hf = transformers_model(ours)
    hf.save_pretrained(folder / "transformers")

    # Same weights: the three must give the same codes.
    audio = make_audio(sample_rate, num_samples(preset, WARMUP_SECONDS))
    with torch.no_grad():
        codes = {
            "ours": ours.encode(audio, sample_rate=sample_rate).codes,
            "reference": reference.encode(reference.preprocess(audio, sample_rate))[1],
            "transformers": hf.encode(audio).audio_codes,
        }
    same = all(torch.equal(codes["ours"], c) for c in codes.values())
    del reference, hf

    # Decode input: our codes for the benchmark audio (they do not depend on our chunk size), or random codes.
    generator = torch.Generator().manual_seed(SEED)
    for seconds in spec["seconds"]:
        n = num_samples(preset, seconds)
        if spec.get("codes") == "random":
            shape = (1, ours.config.n_codebooks, n // PRESET_INFO[preset]["hop"])
            codes = torch.randint(0, ours.config.codebook_size, shape, generator=generator)
        else:
            codes = ours.encode(make_audio(sample_rate, n), sample_rate=sample_rate).codes
        torch.save(codes, folder / f"codes_{seconds:g}s.pt")
    # The repo's model code may change while benchmarks run: record which version the folder holds.
    code = hashlib.sha256(b"".join((folder / "ours" / name).read_bytes() for name in sorted(
        p.name for p in (folder / "ours").glob("*.py"))))
    return {"same_codes": same, "transformers": transformers.__version__, "torch": torch.__version__,
            "model_code_sha256": code.hexdigest()[:12]}


def agreement(spec: dict) -> dict:
    """Our reduced-precision path spec["impl"] (ours+bf16: `model.to(torch.bfloat16)`; ours+medium: float32
    under `torch.set_float32_matmul_precision("medium")`) against our float32 model on AGREEMENT_SECONDS of speech
    and of music-like audio: the share of codes equal (all, and of the first codebook) and the SNR of its decoding
    of the float32 codes against their float32 decoding."""
    import copy

    import torch

    from dac_codec import DacModel

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    fp32 = DacModel.from_pretrained(Path(spec["folder"]) / "ours")
    medium = spec["impl"] == "ours+medium"
    reduced = fp32 if medium else copy.deepcopy(fp32).to(torch.bfloat16)

    rate, n = fp32.sampling_rate, num_samples(spec["preset"], AGREEMENT_SECONDS)
    result = {}
    for name, audio in (("speech", speech_audio(rate, n)), ("music", make_audio(rate, n))):
        codes = fp32.encode(audio, rate).codes
        decoded = fp32.decode(s=codes)
        torch.set_float32_matmul_precision("medium" if medium else "highest")
        codes16, decoded16 = reduced.encode(audio, rate).codes, reduced.decode(s=codes).float()
        torch.set_float32_matmul_precision("highest")
        snr = 10 * torch.log10(decoded.pow(2).sum() / (decoded16 - decoded).pow(2).sum())
        result[name] = {"codes_equal": (codes16 == codes).float().mean().item(),
                        "first_codebook_equal": (codes16[:, 0] == codes[:, 0]).float().mean().item(),
                        "decoded_snr_db": snr.item()}
    return result


def _rss_mb(field: str) -> float:
    """VmRSS (current) or VmHWM (peak since the last reset) of this process, from /proc, in MB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def _load(spec: dict, dtype):
    """(model, encode(x), decode(codes)) for spec["impl"]; the callables run one whole operation."""
    import torch

    folder, impl = Path(spec["folder"]), spec["impl"]
    sample_rate = PRESET_INFO[spec["preset"]]["sample_rate"]
    chunk = spec.get("chunk")  # ours only: None = the model's default, 0 = no chunking
    if impl in ("ours", "ours+bf16", "ours+medium", "ours+jemalloc"):
        from transformers import AutoModel

        model = AutoModel.from_pretrained(folder / "ours", trust_remote_code=True).to(dtype)
        encode = lambda x: model.encode(x, sample_rate=sample_rate, chunk_size_in_sec=chunk).codes
        decode = lambda codes: model.decode(s=codes, chunk_size=chunk)
        return model, encode, decode
    if impl in ("reference", "reference+jemalloc", "reference-chunked"):
        import dac

        checkpoint = torch.load(folder / "reference.pth", map_location="cpu", weights_only=True)
        model = dac.model.DAC(**checkpoint["metadata"]["kwargs"])
        model.load_state_dict(checkpoint["state_dict"], strict=True)
        del checkpoint
        model = model.eval().to(dtype)
        if impl != "reference-chunked":
            encode = lambda x: model.encode(model.preprocess(x, sample_rate))[1]
            decode = lambda codes: model.decode(model.quantizer.from_codes(codes)[0])
            return model, encode, decode
        from audiotools import AudioSignal

        # The reference's own windowed compress / decompress (see bench_memory.py); decode takes the .dac file
        # that the compress run of the same length saved.
        def encode(x):
            dac_file = model.compress(AudioSignal(x, sample_rate), win_duration=spec["win_duration"])
            if spec.get("save_dac") and x.shape[-1] > sample_rate * WARMUP_SECONDS:
                dac_file.save(spec["save_dac"])
            return dac_file.codes

        decode = lambda dac_file: model.decompress(dac_file).audio_data
        return model, encode, decode
    if impl == "transformers":
        import transformers

        model = transformers.DacModel.from_pretrained(folder / "transformers").eval().to(dtype)
        encode = lambda x: model.encode(x).audio_codes
        decode = lambda codes: model.decode(audio_codes=codes).audio_values
        return model, encode, decode
    raise ValueError(f"unknown impl {impl!r}")


def _inputs(spec: dict, dtype):
    """(full input, warm-up input) of spec["op"]."""
    import torch

    preset, seconds = spec["preset"], spec["seconds"]
    sample_rate = PRESET_INFO[preset]["sample_rate"]
    if spec["op"] == "encode":
        audio = make_audio(sample_rate, num_samples(preset, seconds))
        if dtype != torch.float32:
            audio = audio.to(dtype)
        return audio, audio[..., : num_samples(preset, WARMUP_SECONDS)].clone()
    if spec["impl"] == "reference-chunked":
        from dac.model.base import DACFile

        dac_file = DACFile.load(spec["load_dac"])
        warm = DACFile.load(spec["load_dac"])
        warm.codes = warm.codes[..., : warm.chunk_length]  # one window, cropped to a frame's worth of samples
        warm.original_length = PRESET_INFO[preset]["hop"]
        return dac_file, warm
    codes = torch.load(Path(spec["folder"]) / f"codes_{seconds:g}s.pt", weights_only=True)
    frames = math.ceil(WARMUP_SECONDS * sample_rate / PRESET_INFO[preset]["hop"])
    return codes, codes[..., :frames].clone()


def worker(spec: dict) -> dict:
    """One measurement in this (fresh) process: load, build the input, warm up on 1 s (WARMUP_CALLS calls), time
    one call."""
    import torch

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    torch.manual_seed(SEED)
    # ours+bf16: our bf16 path beside the others in --dtype (the fp32 reference, by default)
    dtype = torch.bfloat16 if spec["impl"] == "ours+bf16" else getattr(torch, spec["dtype"])
    if spec["impl"] == "ours+medium":
        torch.set_float32_matmul_precision("medium")
    result = {"threads": torch.get_num_threads(), "torch": torch.__version__}
    try:
        model, encode, decode = _load(spec, dtype)
        run = encode if spec["op"] == "encode" else decode
        full, warm = _inputs(spec, dtype)
        result["rss_loaded_mb"] = _rss_mb("VmRSS")  # weights and input resident, before any call
        with torch.no_grad():
            for _ in range(WARMUP_CALLS):
                run(warm)
            peak_before = _maxrss_mb()
            with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM, to read the timed call's own peak
                f.write("5")
            usage, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            output = run(full)
            result["time_s"] = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_SELF)  # fresh memory costs a page fault per 4 KB
            result["page_faults"] = after.ru_minflt - usage.ru_minflt
            result["system_s"] = after.ru_stime - usage.ru_stime
        result["call_peak_mb"] = _rss_mb("VmHWM")
        result["peak_rss_mb"] = max(peak_before, _maxrss_mb())
        result["output_shape"] = list(output.shape)
    except Exception as error:  # reported in the table; the other measurements go on
        result["error"] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:200]
        result["peak_rss_mb"] = _maxrss_mb()
    return result


def ceiling(spec: dict) -> dict:
    """This machine's two peaks, with this dtype and thread count (best of 5 calls each): the conv peak on
    CEILING_CONVS, run as our model's streams run them (channels-last conv2d over time-major input; at these
    lengths the weight's per-call reorder costs nothing), and the FMA peak on FMA_GEMMS (each repeated 64 times
    over L2-resident operands), FMA_POINTWISE (oneDNN's GEMMs, likewise) and a CEILING_MATMUL square matmul. The
    FMA peak is the best rate of all of these and the conv probes: a kernel that reaches a rate shows that the FMA
    units do, and MKL does not run every CPU's widest units (on an AMD Zen 5 its GEMMs reached 200 GFLOP/s, a
    convolution 477)."""
    import torch
    import torch.nn.functional as F

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    dtype = getattr(torch, spec["dtype"])
    generator = torch.Generator().manual_seed(SEED)

    def best(run, flop):
        run()
        times = []
        for _ in range(5):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        return flop / min(times) / 1e9

    conv, fma = {}, {}
    with torch.inference_mode():
        for c_in, c_out, kernel, dilation, steps in CEILING_CONVS:
            x = torch.randn(1, steps + dilation * (kernel - 1), c_in, generator=generator).to(dtype)
            w = (torch.randn(c_out, c_in, 1, kernel, generator=generator) / (c_in * kernel) ** 0.5).to(dtype)
            run = lambda x=x, w=w, d=dilation: F.conv2d(x.transpose(1, 2).unsqueeze(2), w, None, 1, 0, (1, d))
            conv[f"conv {c_in}->{c_out} k{kernel} d{dilation}"] = best(run, 2 * c_in * c_out * kernel * steps)
        for n in FMA_GEMMS:
            a, b, out = (torch.randn(n, n, generator=generator).to(dtype) for _ in range(3))

            def run(a=a, b=b, out=out):
                for _ in range(64):
                    torch.mm(a, b, out=out)

            fma[f"gemm {n}^2"] = best(run, 64 * 2 * n**3)
        for channels, steps in FMA_POINTWISE:
            x = torch.randn(1, steps, channels, generator=generator).to(dtype).transpose(1, 2).unsqueeze(2)
            w = torch.randn(channels, channels, 1, 1, generator=generator).to(dtype)

            def run(x=x, w=w):
                for _ in range(64):
                    F.conv2d(x, w)

            fma[f"pointwise {channels}x{steps}"] = best(run, 64 * 2 * channels**2 * steps)
        a, b = (torch.randn(CEILING_MATMUL, CEILING_MATMUL, generator=generator).to(dtype) for _ in range(2))
        fma[f"matmul {CEILING_MATMUL}^2"] = best(lambda: a @ b, 2 * CEILING_MATMUL**3)
    return {"conv_gflops": max(conv.values()), "fma_gflops": max(*fma.values(), *conv.values()),
            "rates": {**conv, **fma},
            "capability": torch.backends.cpu.get_cpu_capability()}


def cpu_info() -> dict:
    """The CPU's model and its kernel-deciding flags, from /proc/cpuinfo (Linux; empty elsewhere)."""
    fields: dict = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        return {"model": "unknown", "flags": []}
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    model = fields.get("model name") or fields.get("Model name") or fields.get("CPU part") or "unknown"
    family = f"family {fields.get('cpu family')}, model {fields.get('model')}" if "cpu family" in fields else ""
    return {"model": model, "family": family, "vendor": fields.get("vendor_id", ""),
            "flags": [flag for flag in KERNEL_FLAGS if flag in flags]}


# ----------------------------------------------------------------------------------------------------------------
# Parent side: spawns workers, never imports torch
def jemalloc() -> str | None:
    return next((path for path in JEMALLOC_PATHS if Path(path).exists()), None)


def spawn(script: str, mode: str, spec: dict, home: Path, timeout: float | None = None) -> dict:
    """Runs `python script --<mode> JSON` in a fresh process and returns the JSON it prints last."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(home)}
    if spec.get("impl", "").endswith("+jemalloc"):
        env.update(LD_PRELOAD=jemalloc(), MALLOC_CONF=JEMALLOC_CONF)
    command = [sys.executable, script, f"--{mode}", json.dumps(spec)]
    try:
        done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:g} s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"error": f"worker exit code {done.returncode}: {tail}"[:200]}
    return json.loads(lines[-1])


def worker_main(argv: list[str]) -> bool:
    """Handles `--worker`, `--prepare`, `--ceiling` and `--agreement` JSON; True if this process was one of them."""
    modes = {"--worker": worker, "--prepare": prepare, "--ceiling": ceiling, "--agreement": agreement}
    if len(argv) == 2 and argv[0] in modes:
        print(json.dumps(modes[argv[0]](json.loads(argv[1]))), flush=True)
        return True
    return False


def fmt(value, digits=2, suffix=""):
    return "—" if value is None else f"{value:.{digits}f}{suffix}"


def command_line() -> str:
    return shlex.join([os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(str(ROOT)) else
                       sys.executable, *sys.argv])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["44khz"], choices=list(PRESET_INFO))
    parser.add_argument("--seconds", nargs="+", type=float, default=[10.0], help="audio length(s); e.g. 10 60")
    parser.add_argument("--ops", nargs="+", default=list(OPS), choices=OPS)
    parser.add_argument("--impls", nargs="+", default=[i for i in IMPLS if i != "ours+jemalloc"], choices=IMPLS)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="weights and audio of every implementation (codes stay int64)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads; default: torch's")
    parser.add_argument("--repeats", type=int, default=3, help="fresh-process runs per point (median)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds before a worker is given up")
    parser.add_argument("--json", help="also write the results as JSON to this path")
    args = parser.parse_args()
    if not jemalloc():
        for impl in [impl for impl in args.impls if impl.endswith("+jemalloc")]:
            print(f"skipping {impl}: no libjemalloc.so.2 (apt install libjemalloc2)", file=sys.stderr)
            args.impls.remove(impl)

    points = [(p, s, o, i) for p in args.presets for s in args.seconds for o in args.ops for i in args.impls]
    runs = {point: [] for point in points}
    load_start = os.getloadavg()[0]
    temp = Path(tempfile.mkdtemp(prefix="dac_bench_speed_"))
    try:
        checks = {}
        for preset in args.presets:
            print(f"preparing {preset} (weights, converted folders, codes) ...", file=sys.stderr, flush=True)
            checks[preset] = spawn(__file__, "prepare", {"preset": preset, "folder": str(temp / preset),
                                                         "seconds": args.seconds if "decode" in args.ops else []},
                                   temp / "hf_home")
            if "error" in checks[preset]:
                sys.exit(f"preparing {preset} failed: {checks[preset]['error']}")
            if not checks[preset]["same_codes"]:
                print(f"WARNING: {preset}: the three implementations give different codes", file=sys.stderr)
        agree = {}
        for impl in [impl for impl in ("ours+bf16", "ours+medium") if impl in args.impls]:
            for preset in args.presets:
                print(f"comparing {preset} {impl} codes with float32's ...", file=sys.stderr, flush=True)
                agree[f"{impl} {preset}"] = spawn(__file__, "agreement", {
                    "preset": preset, "folder": str(temp / preset), "threads": args.threads, "impl": impl},
                    temp / "hf_home")
        print("measuring the conv and FMA peaks ...", file=sys.stderr, flush=True)
        roof = spawn(__file__, "ceiling", {"dtype": args.dtype, "threads": args.threads}, temp / "hf_home")
        if "error" in roof:
            sys.exit(f"measuring the peaks failed: {roof['error']}")
        for repeat in range(args.repeats):  # interleaved, so that drift in machine load hits every impl alike
            for preset, seconds, op, impl in points:
                spec = dict(preset=preset, seconds=seconds, op=op, impl=impl, dtype=args.dtype,
                            threads=args.threads, folder=str(temp / preset))
                result = spawn(__file__, "worker", spec, temp / "hf_home", args.timeout)
                runs[(preset, seconds, op, impl)].append(result)
                shown = result.get("error") or (f"{result['time_s']:.2f} s, {result['peak_rss_mb']:.0f} MB, "
                                                f"{result['page_faults']} page faults")
                print(f"[{repeat + 1}/{args.repeats}] {preset} {seconds:g}s {op} {impl}: {shown}",
                      file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(temp, ignore_errors=True)

    rows = []
    for preset, seconds, op, impl in points:
        results = runs[(preset, seconds, op, impl)]
        times = [r["time_s"] for r in results if "time_s" in r]
        errors = [r["error"] for r in results if "error" in r]
        audio_seconds = num_samples(preset, seconds) / PRESET_INFO[preset]["sample_rate"]
        median = statistics.median(times) if times and not errors else None
        rows.append(dict(
            preset=preset, seconds=seconds, audio_seconds=audio_seconds, op=op, impl=impl,
            dtype={"ours+bf16": "bfloat16", "ours+medium": "float32, bf16 products"}.get(impl, args.dtype),
            times_s=times, median_s=median, error=errors[0] if errors else None,
            peak_rss_mb=max((r["peak_rss_mb"] for r in results if "peak_rss_mb" in r), default=None),
            call_peak_mb=max((r["call_peak_mb"] for r in results if "call_peak_mb" in r), default=None),
            page_faults=statistics.median(r["page_faults"] for r in results if "page_faults" in r) if times else None,
            system_s=statistics.median(r["system_s"] for r in results if "system_s" in r) if times else None,
            gflops=PRESET_INFO[preset]["gflop"][op] * audio_seconds / median if median else None,
            threads=next((r["threads"] for r in results if "threads" in r), None),
        ))
    for row in rows:
        for base in ("reference", "reference+jemalloc"):
            time_s = next((r["median_s"] for r in rows if r["impl"] == base and all(
                r[k] == row[k] for k in ("preset", "seconds", "op"))), None)
            row[f"speedup_vs_{base}"] = time_s / row["median_s"] if time_s and row["median_s"] else None

    threads = next((r["threads"] for r in rows if r["threads"]), None)
    cpu = cpu_info()
    print("\n| preset | audio | op | impl | dtype | median time (s) | vs reference | vs reference+jemalloc "
          "| peak RSS (MB) | page faults | GFLOP/s | of conv peak | of FMA peak |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        time_cell = fmt(r["median_s"]) if not r["error"] else f"error: {r['error']}"
        same_dtype = r["dtype"] == args.dtype  # the peaks are measured in --dtype
        share = {peak: 100 * r["gflops"] / roof[peak] if r["gflops"] and same_dtype else None
                 for peak in ("conv_gflops", "fma_gflops")}
        r.update(of_conv_peak=share["conv_gflops"], of_fma_peak=share["fma_gflops"])
        print(f"| {r['preset']} | {r['seconds']:g} s | {r['op']} | {r['impl']} | {r['dtype']} | {time_cell} | "
              f"{fmt(r['speedup_vs_reference'], 2, 'x')} | {fmt(r['speedup_vs_reference+jemalloc'], 2, 'x')} | "
              f"{fmt(r['peak_rss_mb'], 0)} | {fmt(r['page_faults'], 0)} | {fmt(r['gflops'], 1)} | "
              f"{fmt(share['conv_gflops'], 0, '%')} | {fmt(share['fma_gflops'], 0, '%')} |")
    print(f"\nCPU: {cpu['model']} ({', '.join(x for x in (cpu['vendor'], cpu['family']) if x)}); torch's kernels: "
          f"{roof['capability']}; flags: {' '.join(cpu['flags']) or 'none of ' + ' '.join(KERNEL_FLAGS)}")
    print(f"conv peak {roof['conv_gflops']:.1f} GFLOP/s, FMA peak {roof['fma_gflops']:.1f} GFLOP/s ({args.dtype}; "
          + ", ".join(f"{name} {rate:.0f}" for name, rate in roof["rates"].items()) + ")")
    print(f"\nmedian of {args.repeats} fresh-process runs; {threads} torch threads; {os.cpu_count()} CPUs; "
          f"load average {load_start:.2f} at start, {os.getloadavg()[0]:.2f} at end; torch "
          f"{checks[args.presets[0]].get('torch')}, transformers {checks[args.presets[0]].get('transformers')}; "
          f"our model code (sha256 of the folder's .py files) {checks[args.presets[0]].get('model_code_sha256')}")
    print("same codes from the three implementations on 1 s: "
          + ", ".join(f"{p} {'yes' if c.get('same_codes') else 'NO'}" for p, c in checks.items()))
    for name, result in agree.items():
        shown = result.get("error") or "; ".join(
            f"{audio}: {100 * r['codes_equal']:.2f}% of codes equal ({100 * r['first_codebook_equal']:.2f}% of the "
            f"first codebook), decoded at {r['decoded_snr_db']:.1f} dB SNR" for audio, r in result.items())
        print(f"{name} against float32, {AGREEMENT_SECONDS:g} s: {shown}")
    print(f"command: {command_line()}")
    if args.json:
        meta = dict(command=command_line(), repeats=args.repeats, threads=threads, cpus=os.cpu_count(),
                    load_average=[load_start, os.getloadavg()[0]], checks=checks, peaks=roof, cpu=cpu,
                    agreement=agree)
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    if not worker_main(sys.argv[1:]):
        main()
