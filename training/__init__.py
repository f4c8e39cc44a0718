"""Fine-tuning DAC: the original's training objective (`losses`: discriminator, losses and their weights) and the
fine-tuning loop (`finetune`, the `dac-codec finetune` command), standing on the model's public API."""

from .losses import (
    LAMBDAS,
    Discriminator,
    MelSpectrogramLoss,
    MultiScaleSTFTLoss,
    discriminator_loss,
    generator_losses,
    objective,
)

__all__ = ["LAMBDAS", "Discriminator", "MelSpectrogramLoss", "MultiScaleSTFTLoss", "discriminator_loss",
           "generator_losses", "objective"]
