"""The latent-diffusion training objective both UNet families train with: predict the added noise.

A batch is a dict of tensors, so a trainer moves it with `{k: v.to(device) for k, v in batch.items()}`:
- `sample`    (b, in_channels, size, size): noisy latents, followed by random conditioning channels
              when the UNet takes more channels than it predicts (as inpainting UNets do);
- `timesteps` (b,) int64 in [0, 1000);
- `context`   (b, 77, context_dim): a stand-in for text-encoder states (77 = CLIP's token count);
- `noise`     (b, out_channels, size, size): what the model must predict.

Torch is imported inside the functions: family modules import this one at registration time.
"""

from __future__ import annotations

from typing import Any

TRAIN_TIMESTEPS = 1000
CONTEXT_TOKENS = 77


def _alphas_cumprod(device: Any):
    import torch

    # Stable Diffusion's "scaled linear" schedule: betas spaced linearly in sqrt from 0.00085 to 0.012
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, TRAIN_TIMESTEPS, device=device) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def denoising_batch(
    *,
    in_channels: int,
    out_channels: int,
    size: int,
    context_dim: int,
    batch_size: int,
    generator: Any,
) -> dict[str, Any]:
    """A synthetic batch (the keys above), drawn from `generator` on the generator's device.

    Raises ValueError when `out_channels > in_channels`: such a UNet does not predict noise shaped
    like its input, so this objective does not apply.
    """
    import torch

    if out_channels > in_channels:
        raise ValueError(f"noise prediction needs out_channels <= in_channels, got {out_channels} > {in_channels}")
    device = generator.device

    def draw(*shape: int):
        return torch.randn(*shape, generator=generator, device=device)

    latents = draw(batch_size, out_channels, size, size)
    noise = draw(batch_size, out_channels, size, size)
    timesteps = torch.randint(0, TRAIN_TIMESTEPS, (batch_size,), generator=generator, device=device)
    alpha_bar = _alphas_cumprod(device)[timesteps].view(-1, 1, 1, 1)
    sample = alpha_bar.sqrt() * latents + (1 - alpha_bar).sqrt() * noise
    if in_channels > out_channels:
        sample = torch.cat([sample, draw(batch_size, in_channels - out_channels, size, size)], dim=1)
    context = draw(batch_size, CONTEXT_TOKENS, context_dim)
    return {"sample": sample, "timesteps": timesteps, "context": context, "noise": noise}


def noise_loss(prediction: Any, batch: dict[str, Any]):
    """Mean squared error between a noise prediction and the batch's noise, in fp32 (a scalar tensor)."""
    import torch.nn.functional as F

    return F.mse_loss(prediction.float(), batch["noise"].float())
