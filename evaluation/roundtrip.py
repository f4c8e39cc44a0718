"""One input through a model and back, as a user's `encode` and `decode` take it."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch


@torch.no_grad()
def roundtrip(model, samples: np.ndarray, n_quantizers: Optional[int]) -> tuple[np.ndarray, np.ndarray]:
    """(codes (n, frames), reconstruction (t,)) of samples (t,) at the model's rate: `model.encode`, then
    `model.decode(s=codes)` cut or zero-padded to the input's length (the 16 and 24 kHz decoders give up to 8
    samples less)."""
    rate = model.config.sampling_rate
    codes = model.encode(torch.from_numpy(samples)[None, None].to(model.device), rate, n_quantizers).codes
    audio = model.decode(s=codes)[0, 0].float().cpu().numpy()[: samples.shape[-1]]
    return codes[0].cpu().numpy(), np.pad(audio, (0, samples.shape[-1] - audio.shape[-1]))
