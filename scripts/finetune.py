"""Fine-tunes DAC on a folder of audio with the original's training objective, and saves a model folder.

    python scripts/finetune.py --model descript/dac_44khz --data my_audio/ --output runs/mine --steps 20000

--model takes a folder or Hub id of this package's format, a transformers `DacModel` (such as descript/dac_44khz) or
an original release checkpoint (.pth). Each step trains on a batch of random excerpts (--duration seconds, mono, at
the model's rate) of the audio files under --data (any format and rate the package reads; files that cannot be read
are reported and left out). The objective and optimisers are the original's (descript-audio-codec's scripts/train.py
and conf/base.yml): the discriminator (MPD, MRD) steps first on the least-squares GAN loss, then the generator on
15 * mel + 2 * feature matching + 1 * adversarial + 0.25 * commitment + 1 * codebook, with weight norm, quantizer
dropout, AdamW (lr 1e-4, betas (0.8, 0.99)), exponential decay (gamma 0.999996) and gradient clipping (norm 1000 for
the generator, 10 for the discriminator). The discriminator starts from scratch: only generator weights were
released.

OUTPUT/checkpoint.pt is written every --save-every steps (atomically) and at the end; a rerun with the same OUTPUT
resumes from it, to the same weights as an uninterrupted run. At the end weight norm is folded and OUTPUT/model is
written: it loads with `AutoModel.from_pretrained("OUTPUT/model", trust_remote_code=True)`. Real runs want a GPU
(--device cuda; --precision bf16 or fp16 for mixed precision); a short run on CPU shows that everything works.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Optional

import soundfile
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import convert_checkpoint  # noqa: E402
import dac_training  # noqa: E402

audio_io = sys.modules["dac_codec.audio_io"]
cli = __import__("dac_codec.cli", fromlist=["cli"])
files = sys.modules["dac_codec.files"]
loading = sys.modules["dac_codec.loading"]
MAX_DURATION = 60.0  # seconds per excerpt: the original trains on 0.38 s; more is a mistake that fills memory


class Excerpts:
    """Random excerpts of the audio files under a folder: float32 (batch, 1, samples) at the model's rate."""

    def __init__(self, folder: str, sample_rate: int, seconds: float, generator: torch.Generator):
        self.sample_rate, self.seconds, self.generator = sample_rate, seconds, generator
        self.files, self.skipped = [], []
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"No such folder: {folder!r} (--data takes a folder of audio files).")
        paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in files.AUDIO_SUFFIXES and p.is_file())
        for path in paths:
            try:
                info = soundfile.info(path)
                if info.frames == 0:
                    raise ValueError("it holds no samples")
                self.files.append((path, info.frames, info.samplerate))
            except (soundfile.LibsndfileError, RuntimeError, ValueError) as error:  # corrupt, empty, not audio
                self.skipped.append(f"{path}: {loading.first_line(error)}")
        if not self.files:
            raise ValueError(f"No readable audio file under {folder!r} ({len(self.skipped)} could not be read).")

    def batch(self, size: int) -> torch.Tensor:
        length = round(self.seconds * self.sample_rate)
        batch = torch.zeros(size, 1, length)
        item = 0
        while item < size:
            if not self.files:
                raise ValueError("Every audio file failed to read; see the files skipped above.")
            index = int(torch.randint(len(self.files), (1,), generator=self.generator))
            path, frames, rate = self.files[index]
            wanted = round(self.seconds * rate)
            start = int(torch.randint(max(1, frames - wanted + 1), (1,), generator=self.generator))
            try:
                data, _ = soundfile.read(path, start=start, frames=wanted, dtype="float32", always_2d=True)
                audio = audio_io.prepare_audio(data.T, rate, self.sample_rate)[0, 0, :length]  # mono, model rate
            except (soundfile.LibsndfileError, RuntimeError, ValueError) as error:  # breaks mid-way: drop it
                print(f"skipped {path}: {loading.first_line(error)}", file=sys.stderr)
                del self.files[index]
                continue
            batch[item, 0, : audio.shape[-1]] = audio  # files shorter than an excerpt are zero-padded
            item += 1
        return batch


class Trainer:
    """The generator (our model, under weight norm), the discriminator, their optimisers and schedules, and one
    training step of the original's `train_loop`."""

    def __init__(self, model, lr: float = 1e-4, precision: str = "fp32"):
        self.device = model.device
        self.generator = model.train()
        self.generator.apply_weight_norm()
        rate = model.config.sampling_rate
        self.discriminator = dac_training.Discriminator(sample_rate=rate).to(self.device).train()
        self.mel_loss = dac_training.MelSpectrogramLoss(rate)
        self.optimizers = [torch.optim.AdamW(m.parameters(), lr=lr, betas=(0.8, 0.99))
                           for m in (self.generator, self.discriminator)]
        self.schedulers = [torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.999996) for o in self.optimizers]
        if precision != "fp32" and self.device.type != "cuda":
            raise ValueError(f"--precision {precision} needs a CUDA device; on {self.device.type} use fp32.")
        self.dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        self.scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
        self.step = 0

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None)

    def train_step(self, signal: torch.Tensor) -> dict[str, float]:
        signal = signal.to(self.device)
        optimizer_g, optimizer_d = self.optimizers
        with self.autocast():
            out = self.generator(signal)
            signal = signal[..., : out.audio.shape[-1]]  # 16 and 24 kHz models can return 8 samples less
            d_loss = dac_training.discriminator_loss(self.discriminator(out.audio.detach()),
                                                     self.discriminator(signal))
        optimizer_d.zero_grad()
        self.scaler.scale(d_loss).backward()
        self.scaler.unscale_(optimizer_d)
        torch.nn.utils.clip_grad_norm_(self.discriminator.parameters(), 10.0)
        self.scaler.step(optimizer_d)

        with self.autocast():
            mel = self.mel_loss(out.audio, signal)
            gen, feat = dac_training.generator_losses(self.discriminator(out.audio), self.discriminator(signal))
            loss = dac_training.objective(mel=mel, gen=gen, feat=feat, commitment=out.commitment_loss,
                                          codebook=out.codebook_loss)
        optimizer_g.zero_grad()
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(optimizer_g)
        torch.nn.utils.clip_grad_norm_(self.generator.parameters(), 1e3)
        self.scaler.step(optimizer_g)
        self.scaler.update()
        for scheduler in self.schedulers:
            scheduler.step()
        self.step += 1
        return {"loss": loss.item(), "mel": mel.item(), "gen": gen.item(), "feat": feat.item(),
                "disc": d_loss.item()}

    def state_dict(self) -> dict:
        return {"step": self.step, "config": self.generator.config.to_dict(),
                "generator": self.generator.state_dict(), "discriminator": self.discriminator.state_dict(),
                "optimizers": [o.state_dict() for o in self.optimizers],
                "schedulers": [s.state_dict() for s in self.schedulers], "scaler": self.scaler.state_dict(),
                "torch_rng": torch.get_rng_state()}

    def load_state_dict(self, state: dict, source: str = "the checkpoint") -> None:
        """Resumes from `state_dict()`'s output; one of another model, or not of this trainer, is a ValueError."""
        try:
            saved = convert_checkpoint.DacConfig.from_dict(state["config"])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{source} is not a fine-tuning checkpoint ({loading.first_line(error)}).") from None
        if saved.architecture() != self.generator.config.architecture():
            raise ValueError(f"{source} was made with another model; give another --output.")
        try:
            self.generator.load_state_dict(state["generator"])
            self.discriminator.load_state_dict(state["discriminator"])
            for target, saved in zip([*self.optimizers, *self.schedulers, self.scaler],
                                     [*state["optimizers"], *state["schedulers"], state["scaler"]], strict=True):
                target.load_state_dict(saved)
            torch.set_rng_state(state["torch_rng"].cpu())
            self.step = int(state["step"])
        except (KeyError, TypeError, ValueError, RuntimeError) as error:  # strict loads of a damaged checkpoint
            raise ValueError(f"{source} does not fit this trainer ({loading.first_line(error)}); give another "
                             "--output.") from None


def save_checkpoint(trainer: Trainer, data: Excerpts, path: Path) -> None:
    """Writes the checkpoint under a temporary name and renames it: an interruption never leaves half a file."""
    state = {**trainer.state_dict(), "data_rng": data.generator.get_state()}
    files.write_atomically(path, lambda target: torch.save(state, target))


def load_checkpoint(trainer: Trainer, data: Excerpts, path: Path) -> None:
    try:
        state = torch.load(path, map_location=trainer.device, weights_only=True)
    except Exception as error:  # truncated, or not a checkpoint: a file from elsewhere is data
        raise ValueError(f"{path} does not read back as a checkpoint ({loading.first_line(error)}); delete it to "
                         "start over.") from None
    if not isinstance(state, dict) or not isinstance(state.get("data_rng"), torch.Tensor):
        raise ValueError(f"{path} is not a fine-tuning checkpoint; delete it to start over.")
    trainer.load_state_dict(state, str(path))
    data.generator.set_state(state["data_rng"].cpu())


def main(argv: Optional[list[str]] = None) -> int:
    """Runs fine-tuning; a user error is one line and status 1, Ctrl-C saves a checkpoint at the step's end."""
    return cli.run_command(lambda: _finetune(argv))


def _finetune(argv: Optional[list[str]]) -> int:
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="folder or Hub id (ours or transformers'), or a .pth")
    parser.add_argument("--data", required=True, help="folder of audio files, searched recursively")
    parser.add_argument("--output", required=True, help="folder for checkpoint.pt and the final model/")
    parser.add_argument("--steps", type=int, default=10000, help="training steps in all (a resumed run counts on)")
    parser.add_argument("--batch-size", type=int, default=12)
    parser.add_argument("--duration", type=float, default=0.38, help="seconds per excerpt (base.yml: 0.38)")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--quantizer-dropout", type=float, default=1.0, help="base.yml: 1.0")
    parser.add_argument("--save-every", type=int, default=1000, help="steps between checkpoints")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help="mixed on CUDA")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("steps", "batch_size", "save_every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not 0 <= args.quantizer_dropout <= 1:
        parser.error(f"--quantizer-dropout must be in [0, 1], got {args.quantizer_dropout}")
    if not 0 < args.lr < 1:
        parser.error(f"--lr must be in (0, 1), got {args.lr}")
    device, _ = loading.resolve_device(args.device)

    from tqdm import tqdm

    torch.manual_seed(args.seed)
    loaded = loading.load_model(args.model)
    config = convert_checkpoint.DacConfig.from_dict({**loaded.config.to_dict(),
                                                     "quantizer_dropout": args.quantizer_dropout})
    shortest = max(config.hop_length, dac_training.MIN_SAMPLES) / config.sampling_rate
    if not shortest <= args.duration <= MAX_DURATION:
        parser.error(f"--duration must be {shortest:.3f} to {MAX_DURATION:g} seconds for this model, got "
                     f"{args.duration}")
    model = convert_checkpoint.DacModel(config)  # the config drives construction, dropout included
    model.load_state_dict(loaded.state_dict())
    trainer = Trainer(model.to(device), lr=args.lr, precision=args.precision)
    data = Excerpts(args.data, config.sampling_rate, args.duration, torch.Generator().manual_seed(args.seed))
    for problem in data.skipped:
        print(f"skipped {problem}", file=sys.stderr)

    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    checkpoint = output / "checkpoint.pt"
    if checkpoint.is_file():
        load_checkpoint(trainer, data, checkpoint)
        print(f"resumed from {checkpoint} at step {trainer.step}", file=sys.stderr)

    with _stop_requests() as stop, tqdm(total=args.steps, initial=trainer.step, unit="step",
                                        desc="fine-tuning") as bar:
        while trainer.step < args.steps:
            losses = trainer.train_step(data.batch(args.batch_size))
            bar.set_postfix({k: f"{v:.3g}" for k, v in losses.items()}, refresh=False)
            bar.update()
            if trainer.step % args.save_every == 0 or trainer.step == args.steps or stop:
                save_checkpoint(trainer, data, checkpoint)
            if stop:
                raise KeyboardInterrupt  # at a step's end, its checkpoint written: one line, and the rerun resumes

    model = trainer.generator.eval().cpu()
    model.remove_weight_norm()
    folder = convert_checkpoint.write_model_folder(model, output / "model")
    print(f"wrote {folder}: load it with AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True)")
    return 0


class _StopRequests(list):
    """True once Ctrl-C or SIGTERM came (the first one; a second stops at once)."""

    def __bool__(self) -> bool:
        return len(self) > 0


def _stop_requests():
    import contextlib

    @contextlib.contextmanager
    def handled():
        requests = _StopRequests()

        def request(signum, frame):
            if requests:
                raise KeyboardInterrupt
            requests.append(signum)

        previous = {sig: signal.signal(sig, request) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield requests
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    return handled()


if __name__ == "__main__":
    sys.exit(main())
