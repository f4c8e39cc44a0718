"""Fine-tunes DAC on a folder of audio with the original's training objective, and saves a model folder.

    dac-codec finetune --model descript/dac_44khz --data my_audio/ --output runs/mine --steps 20000

The model (--model) is a folder or Hub id of this package's format, a transformers `DacModel` (such as
descript/dac_44khz) or an original release checkpoint (.pth). Each step trains on a batch of random excerpts (--duration
seconds, mono, at the model's rate) of the audio files under --data (any format and rate the package reads; files that
cannot be read are reported and left out). The objective and optimisers are the original's (descript-audio-codec's
scripts/train.py and conf/base.yml): the discriminator (MPD, MRD) steps first on the least-squares GAN loss, then the
generator on 15 * mel + 2 * feature matching + 1 * adversarial + 0.25 * commitment + 1 * codebook, with weight norm,
quantizer dropout, AdamW (lr 1e-4, betas (0.8, 0.99)), exponential decay (gamma 0.999996) and gradient clipping (norm
1000 for the generator, 10 for the discriminator). The discriminator starts from scratch: only generator weights were
released.

OUTPUT/checkpoint.pt is written every --save-every steps (atomically), at the end, and at the end of the step under
way when Ctrl-C or SIGTERM comes (a second one stops at once); a rerun with the same OUTPUT resumes from it, to the
same weights as an uninterrupted run. At the end weight norm is folded and OUTPUT/model is
written: it loads with `AutoModel.from_pretrained("OUTPUT/model", trust_remote_code=True)`. Real runs want a GPU
(--device cuda; --precision bf16 or fp16 for mixed precision); a short run on CPU shows that everything works.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any, Optional, Union

import soundfile
import torch

from ..audio_io import prepare_audio
from ..configuration_dac import DacConfig, check_int, check_number
from ..modeling_dac import DacModel
from ..tools.command import first_line
from ..tools.convert import write_model_folder
from ..tools.files import AUDIO_SUFFIXES, write_atomically
from ..tools.loading import fold_weight_norm, load_model, load_strict, resolve_device
from . import losses

MAX_DURATION = 60.0  # seconds per excerpt: the original trains on 0.38 s; more is a mistake that fills memory
PRECISIONS = ("fp32", "bf16", "fp16")


class Excerpts:
    """Random excerpts of the audio files under a folder: float32 (batch, 1, samples) at the model's rate."""

    def __init__(self, folder: str, sample_rate: int, seconds: float, generator: torch.Generator):
        self.sample_rate, self.seconds, self.generator = sample_rate, seconds, generator
        self.files, self.skipped = [], []
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"No such folder: {folder!r} (--data takes a folder of audio files).")
        paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
        for path in paths:
            try:
                info = soundfile.info(path)
                if info.frames == 0:
                    raise ValueError("it holds no samples")
                self.files.append((path, info.frames, info.samplerate))
            except (soundfile.LibsndfileError, RuntimeError, ValueError) as error:  # corrupt, empty, not audio
                self.skipped.append(f"{path}: {first_line(error)}")
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
                audio = prepare_audio(data.T, rate, self.sample_rate)[0, 0, :length]  # mono, model rate
            except (soundfile.LibsndfileError, RuntimeError, ValueError) as error:  # breaks mid-way: drop it
                print(f"skipped {path}: {first_line(error)}", file=sys.stderr)
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
        self.discriminator = losses.Discriminator(sample_rate=rate).to(self.device).train()
        self.mel_loss = losses.MelSpectrogramLoss(rate)
        self.optimizers = [torch.optim.AdamW(m.parameters(), lr=lr, betas=(0.8, 0.99))
                           for m in (self.generator, self.discriminator)]
        self.schedulers = [torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.999996) for o in self.optimizers]
        if precision != "fp32" and self.device.type != "cuda":
            raise ValueError(f"precision {precision!r} needs a CUDA device; on {self.device.type} use fp32.")
        self.dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        self.scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
        self.step = 0
        self.best: Optional[float] = None  # the best validation score so far (validation.BEST_BY)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None)

    def train_step(self, signal: torch.Tensor) -> dict[str, float]:
        signal = signal.to(self.device)
        optimizer_g, optimizer_d = self.optimizers
        with self.autocast():
            out = self.generator(signal)
            signal = signal[..., : out.audio.shape[-1]]  # 16 and 24 kHz models can return 8 samples less
            d_loss = losses.discriminator_loss(self.discriminator(out.audio.detach()),
                                                     self.discriminator(signal))
        optimizer_d.zero_grad()
        self.scaler.scale(d_loss).backward()
        self.scaler.unscale_(optimizer_d)
        torch.nn.utils.clip_grad_norm_(self.discriminator.parameters(), 10.0)
        self.scaler.step(optimizer_d)

        with self.autocast():
            mel = self.mel_loss(out.audio, signal)
            gen, feat = losses.generator_losses(self.discriminator(out.audio), self.discriminator(signal))
            loss = losses.objective(mel=mel, gen=gen, feat=feat, commitment=out.commitment_loss,
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
                "torch_rng": torch.get_rng_state(), "best": self.best}

    def load_state_dict(self, state: dict, source: str = "the checkpoint") -> None:
        """Resumes from `state_dict()`'s output; one of another model, or not of this trainer, is a ValueError."""
        try:
            saved = DacConfig.from_dict(state["config"])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{source} is not a fine-tuning checkpoint ({first_line(error)}).") from None
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
            best = state.get("best")
            self.best = None if best is None else float(best)
        except (KeyError, TypeError, ValueError, RuntimeError) as error:  # strict loads of a damaged checkpoint
            raise ValueError(f"{source} does not fit this trainer ({first_line(error)}); give another "
                             "--output.") from None


def save_checkpoint(trainer: Trainer, data: Excerpts, path: Path) -> None:
    """Writes the checkpoint under a temporary name and renames it: an interruption never leaves half a file."""
    state = {**trainer.state_dict(), "data_rng": data.generator.get_state()}
    write_atomically(path, lambda target: torch.save(state, target))


def load_checkpoint(trainer: Trainer, data: Excerpts, path: Path) -> None:
    """Resumes `trainer` and `data` from a checkpoint that `save_checkpoint` wrote (read with weights_only)."""
    try:
        state = torch.load(path, map_location=trainer.device, weights_only=True)
    except Exception as error:  # truncated, or not a checkpoint: a file from elsewhere is data
        raise ValueError(f"{path} does not read back as a checkpoint ({first_line(error)}); delete it to start "
                         "over.") from None
    if not isinstance(state, dict) or not isinstance(state.get("data_rng"), torch.Tensor):
        raise ValueError(f"{path} is not a fine-tuning checkpoint; delete it to start over.")
    trainer.load_state_dict(state, str(path))
    data.generator.set_state(state["data_rng"].cpu())


class StopRequests:
    """Within the block, Ctrl-C and SIGTERM ask to stop at the end of the step under way (true once asked); a
    second one stops at once."""

    def __enter__(self) -> "StopRequests":
        self.asked = False
        self.previous = {sig: signal.signal(sig, self._ask) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _ask(self, signum: int, frame: Any) -> None:
        if self.asked:
            raise KeyboardInterrupt
        self.asked = True

    def __bool__(self) -> bool:
        return self.asked

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def finetune(model: Union[str, DacModel], data: str, output: Union[str, Path], steps: int = 10000,
             batch_size: int = 12, duration: float = 0.38, lr: float = 1e-4, quantizer_dropout: float = 1.0,
             save_every: int = 1000, device: Optional[str] = None, precision: str = "fp32", seed: int = 0,
             val: Optional[str] = None, val_every: int = 500, val_count: int = 8, val_duration: float = 3.0,
             progress: bool = True) -> Path:
    """Fine-tunes `model` (a name for `load_model`, or a model) on the audio under `data` (see the module's
    docstring) and returns the folder of the fine-tuned model, OUTPUT/model.

    Args:
        steps: Training steps in all (a resumed run counts on).
        batch_size: Excerpts per step.
        duration: Seconds per excerpt (base.yml: 0.38).
        lr: AdamW's learning rate.
        quantizer_dropout: The share of each batch trained on a random number of codebooks (base.yml: 1.0).
        save_every: Steps between checkpoints.
        device: Where to train (default: cuda if available).
        precision: "fp32", or mixed "bf16" or "fp16" on CUDA.
        seed: Seeds the initialisation of the discriminator and the choice of excerpts.
        val: A folder of held-out audio: every `val_every` steps `val_count` excerpts of `val_duration` seconds
            from it (drawn once, seeded) are scored (`training.validation`); the best model by mel distance is kept
            in OUTPUT/best, and at the end OUTPUT/evaluation holds the evaluate report of the fine-tuned model
            against the one it started from, on the files of `val`.

    Raises:
        ValueError: A value out of range, a model or data that cannot be used, a checkpoint of another model.
    """
    from tqdm import tqdm

    for name, value in (("steps", steps), ("batch_size", batch_size), ("save_every", save_every),
                        ("val_every", val_every), ("val_count", val_count)):
        check_int(name, value)
    check_number("val_duration", val_duration, 0.5, MAX_DURATION, f"[0.5, {MAX_DURATION:g}] seconds",
                 include_high=True)
    check_number("quantizer_dropout", quantizer_dropout, 0, 1, "[0, 1]", include_high=True)
    check_number("lr", lr, 1e-12, 1, "(0, 1)")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
    device, _ = resolve_device(device)
    torch.manual_seed(seed)
    loaded = load_model(model) if not isinstance(model, DacModel) else model
    config = DacConfig.from_dict({**loaded.config.to_dict(), "quantizer_dropout": quantizer_dropout})
    shortest = max(config.hop_length, losses.MIN_SAMPLES) / config.sampling_rate
    check_number("duration", duration, shortest, MAX_DURATION,
                 f"[{shortest:.3f}, {MAX_DURATION:g}] seconds for this model", include_high=True)
    generator = DacModel(config)  # the config drives construction, dropout included
    generator.load_state_dict(loaded.state_dict())
    trainer = Trainer(generator.to(device), lr=lr, precision=precision)
    excerpts = Excerpts(data, config.sampling_rate, duration, torch.Generator().manual_seed(seed))
    for problem in excerpts.skipped:
        print(f"skipped {problem}", file=sys.stderr)

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    checkpoint = output / "checkpoint.pt"
    if checkpoint.is_file():
        load_checkpoint(trainer, excerpts, checkpoint)
        print(f"resumed from {checkpoint} at step {trainer.step}", file=sys.stderr)
    validation = None
    if val is not None:
        from .validation import Validation

        held_out = Excerpts(val, config.sampling_rate, val_duration, torch.Generator().manual_seed(seed + 1))
        validation = Validation(held_out.batch(val_count), config.sampling_rate, output, trainer.step)
    try:
        with StopRequests() as stop, tqdm(total=steps, initial=trainer.step, unit="step", desc="fine-tuning",
                                          disable=not progress) as bar:
            while trainer.step < steps:
                values = trainer.train_step(excerpts.batch(batch_size))
                bar.set_postfix({k: f"{v:.3g}" for k, v in values.items()}, refresh=False)
                bar.update()
                if validation is not None:
                    validation.train_step(trainer.step, values)
                    if trainer.step % val_every == 0 or trainer.step == steps:
                        validate(trainer, validation, values, output)
                if trainer.step % save_every == 0 or trainer.step == steps or stop:
                    save_checkpoint(trainer, excerpts, checkpoint)
                if stop:
                    raise KeyboardInterrupt  # at a step's end, its checkpoint written: one line; the rerun resumes
    finally:
        if validation is not None:
            validation.close()
    folder = write_model_folder(plain_model(trainer.generator), output / "model")
    if val is not None:
        from ..evaluation import evaluate

        evaluate(val, output / "evaluation", [model if isinstance(model, str) else loaded, str(folder)],
                 device=str(device), progress=progress)
    return folder


def plain_model(generator: DacModel) -> DacModel:
    """A copy of the generator on the CPU with weight norm folded into plain weights; the generator is untouched."""
    model = DacModel(generator.config)
    state = {name: tensor.detach().cpu() for name, tensor in generator.state_dict().items()}
    load_strict(model, fold_weight_norm(state), "the generator")
    return model.eval()


def validate(trainer: Trainer, validation, losses: dict[str, float], output: Path) -> None:
    """Scores the held-out excerpts; a new best (lower mel distance) is written to OUTPUT/best, a model folder."""
    import os
    import shutil

    from .validation import BEST_BY, better_than

    means = validation(trainer.generator, trainer.step, losses)
    if better_than(means[BEST_BY], trainer.best):
        trainer.best = means[BEST_BY]
        # written whole, then put in place of the last best
        temporary = write_model_folder(plain_model(trainer.generator), output / ".best.partial")
        if (output / "best").exists():
            shutil.rmtree(output / "best")
        os.replace(temporary, output / "best")
