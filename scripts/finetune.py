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
import os
import sys
from pathlib import Path
from typing import Optional

import soundfile
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import convert_checkpoint  # noqa: E402
import dac_training  # noqa: E402

audio_io = sys.modules["dac_codec.audio_io"]
AUDIO_SUFFIXES = {f".{name.lower()}" for name in soundfile.available_formats()} | {".oga", ".opus"}


class Excerpts:
    """Random excerpts of the audio files under a folder: float32 (batch, 1, samples) at the model's rate."""

    def __init__(self, folder: str, sample_rate: int, seconds: float, generator: torch.Generator):
        self.sample_rate, self.seconds, self.generator = sample_rate, seconds, generator
        self.files, self.skipped = [], []
        paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
        for path in paths:
            try:
                info = soundfile.info(path)
                if info.frames == 0:
                    raise ValueError("it holds no samples")
                self.files.append((path, info.frames, info.samplerate))
            except Exception as error:  # corrupt, empty, not audio: reported, the others are used
                self.skipped.append(f"{path}: {error}")
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
            except Exception as error:  # a file that breaks mid-way (NaN samples, a damaged frame): drop it
                print(f"skipped {path}: {error}", file=sys.stderr)
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

    def load_state_dict(self, state: dict) -> None:
        saved = convert_checkpoint.DacConfig.from_dict(state["config"])
        if saved.architecture() != self.generator.config.architecture():
            raise ValueError("The checkpoint in --output was made with another model; give another --output.")
        self.generator.load_state_dict(state["generator"])
        self.discriminator.load_state_dict(state["discriminator"])
        for target, saved in zip([*self.optimizers, *self.schedulers, self.scaler],
                                 [*state["optimizers"], *state["schedulers"], state["scaler"]]):
            target.load_state_dict(saved)
        torch.set_rng_state(state["torch_rng"].cpu())
        self.step = state["step"]


def save_checkpoint(trainer: Trainer, data: Excerpts, path: Path) -> None:
    """Writes the checkpoint to a temporary name and renames it: an interruption never leaves half a file."""
    state = {**trainer.state_dict(), "data_rng": data.generator.get_state()}
    temporary = path.with_name(path.name + ".tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="folder or Hub id (ours or transformers'), or a .pth")
    parser.add_argument("--data", required=True, help="folder of audio files, searched recursively")
    parser.add_argument("--output", required=True, help="folder for checkpoint.pt and the final model/")
    parser.add_argument("--steps", type=int, default=10000, help="training steps in all (a resumed run counts on)")
    parser.add_argument("--batch-size", type=int, default=12)
    parser.add_argument("--duration", type=float, default=0.38, help="seconds per excerpt (base.yml: 0.38)")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--quantizer-dropout", type=float, default=1.0, help="base.yml: 1.0")
    parser.add_argument("--save-every", type=int, default=1000, help="steps between checkpoints")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help="mixed on CUDA")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("steps", "batch_size", "save_every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}.")
    if not 0 < args.duration or not 0 <= args.quantizer_dropout <= 1:
        parser.error("--duration must be positive and --quantizer-dropout in [0, 1].")

    from tqdm import tqdm

    torch.manual_seed(args.seed)
    loaded = convert_checkpoint.load_model(args.model)
    config = convert_checkpoint.DacConfig.from_dict({**loaded.config.to_dict(),
                                                     "quantizer_dropout": args.quantizer_dropout})
    model = convert_checkpoint.DacModel(config)  # the config drives construction, dropout included
    model.load_state_dict(loaded.state_dict())
    trainer = Trainer(model.to(args.device), lr=args.lr, precision=args.precision)
    try:
        data = Excerpts(args.data, config.sampling_rate, args.duration, torch.Generator().manual_seed(args.seed))
    except ValueError as error:
        sys.exit(f"error: {error}")
    for problem in data.skipped:
        print(f"skipped {problem}", file=sys.stderr)

    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    checkpoint = output / "checkpoint.pt"
    if checkpoint.is_file():
        state = torch.load(checkpoint, map_location=args.device, weights_only=True)
        trainer.load_state_dict(state)
        data.generator.set_state(state["data_rng"].cpu())
        print(f"resumed from {checkpoint} at step {trainer.step}", file=sys.stderr)

    with tqdm(total=args.steps, initial=trainer.step, unit="step", desc="fine-tuning") as bar:
        while trainer.step < args.steps:
            losses = trainer.train_step(data.batch(args.batch_size))
            bar.set_postfix({k: f"{v:.3g}" for k, v in losses.items()}, refresh=False)
            bar.update()
            if trainer.step % args.save_every == 0 or trainer.step == args.steps:
                save_checkpoint(trainer, data, checkpoint)

    model = trainer.generator.eval().cpu()
    model.remove_weight_norm()
    folder = convert_checkpoint.write_model_folder(model, output / "model")
    print(f"wrote {folder}: load it with AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True)")


if __name__ == "__main__":
    main()
