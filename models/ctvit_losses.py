"""Training losses of the `ctvit` family (axis letters: see `ctvit_attention`).

Two objectives over the same reconstruction:
- `ctclip_loss`: what CT-CLIP's `CTViT.forward` returns when asked for a loss, term for term (the
  reconstruction MSE alone without VGG/GAN; with them also the perceptual, commitment and
  adaptively weighted generator terms; or the discriminator's hinge loss with a gradient penalty);
- `project_losses`: this project's trainer objective, `CTViTLosses`: reconstruction plus
  commitment, and with VGG/GAN fixed-weight perceptual and adversarial terms and the
  discriminator's loss, so a single optimizer can train on `total`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from einops import repeat

from .ctvit_attention import exists
from .ctvit_gan import hinge_discriminator_loss, hinge_generator_loss

if TYPE_CHECKING:
    from .ctvit import CTViT

# Weights of the GAN-side terms against the reconstruction loss in `project_losses`.
PERCEPTUAL_WEIGHT = 0.1
ADVERSARIAL_WEIGHT = 0.1
GRADIENT_PENALTY_WEIGHT = 10.0  # CT-CLIP's
MAX_ADAPTIVE_WEIGHT = 1e4  # CT-CLIP's clamp of the generator term's adaptive weight


@dataclass(frozen=True)
class CTViTLosses:
    """The training losses of one batch; the GAN-side terms are None without `use_vgg_and_gan`.

    `discriminator` trains only the discriminator and the other terms only the rest of the model,
    so `total` can go to a single optimizer.
    """

    recon: torch.Tensor
    commit: torch.Tensor
    perceptual: torch.Tensor | None = None
    adversarial: torch.Tensor | None = None
    discriminator: torch.Tensor | None = None

    @property
    def generator(self) -> torch.Tensor:
        """Every term but the discriminator's (for a trainer with a separate discriminator optimizer)."""
        loss = self.recon + self.commit
        if exists(self.perceptual):
            loss = loss + PERCEPTUAL_WEIGHT * self.perceptual + ADVERSARIAL_WEIGHT * self.adversarial
        return loss

    @property
    def total(self) -> torch.Tensor:
        return self.generator + self.discriminator if exists(self.discriminator) else self.generator


def rgb(images: torch.Tensor) -> torch.Tensor:
    """(b, 1 or 3, H, W) images as RGB for VGG16."""
    return repeat(images, "b 1 h w -> b c h w", c=3) if images.shape[1] == 1 else images


def pick_frames(video: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """Frame `frames[i]` of volume i: (b, c, H, W)."""
    return video[torch.arange(video.shape[0], device=video.device), :, frames]


def project_losses(model: CTViT, video: torch.Tensor, recon: torch.Tensor, commit: torch.Tensor) -> CTViTLosses:
    """`CTViTLosses` of one batch; the GAN-side terms score one random frame per volume."""
    recon_loss, commit = F.mse_loss(recon, video), commit.reshape(())
    if not model.use_vgg_and_gan:
        return CTViTLosses(recon=recon_loss, commit=commit)

    pick = torch.randint(video.shape[2], (video.shape[0],), device=video.device)
    size = model.config.discr_image_size
    real, fake = (pick_frames(x, pick) for x in (video, recon))
    if real.shape[-1] != size:
        real, fake = (F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False) for x in (real, fake))
    with torch.no_grad():
        real_features = model.vgg(rgb(real))
    perceptual = F.mse_loss(model.vgg(rgb(fake)), real_features)
    # the generator's adversarial gradient must not train the discriminator: detached weights
    frozen = {name: p.detach() for name, p in model.discr.named_parameters()}
    adversarial = hinge_generator_loss(torch.func.functional_call(model.discr, frozen, (fake,)))
    discriminator = hinge_discriminator_loss(model.discr(fake.detach()), model.discr(real))
    return CTViTLosses(recon_loss, commit, perceptual, adversarial, discriminator)


def ctclip_loss(
    model: CTViT,
    video: torch.Tensor,
    recon: torch.Tensor,
    commit: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    return_discr_loss: bool = False,
    apply_grad_penalty: bool = True,
) -> torch.Tensor:
    """The loss CT-CLIP's `CTViT.forward` returns for `video` (b, c, f, H, W) and its reconstruction.

    `mask` (b, f) selects the frames the reconstruction loss (and the frame pick) covers. The
    VGG/GAN terms score one random frame per volume, resized to `discr_image_size` (antialiased
    bilinear, as torchvision's `Resize`). Raises ValueError for `return_discr_loss` on a model
    without a discriminator.
    """
    b, c, f = video.shape[:3]
    if exists(mask):
        recon_loss = F.mse_loss(video, recon, reduction="none")[repeat(mask, "b f -> b c f", c=c)].mean()
    else:
        recon_loss = F.mse_loss(video, recon)
    if not model.use_vgg_and_gan and not return_discr_loss:
        return recon_loss
    if not model.use_vgg_and_gan:
        raise ValueError("return_discr_loss needs a discriminator (use_vgg_and_gan=True)")

    logits = torch.randn(b, f, device=video.device)
    if exists(mask):
        logits = logits.masked_fill(~mask, -torch.finfo(logits.dtype).max)
    frames = logits.argmax(dim=-1)
    size = model.config.discr_image_size

    def resized(images: torch.Tensor) -> torch.Tensor:
        return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)

    if return_discr_loss:
        real = resized(pick_frames(video, frames)).detach().requires_grad_()
        fake = resized(pick_frames(recon, frames).detach())
        real_logits = model.discr(real)
        loss = hinge_discriminator_loss(model.discr(fake), real_logits)
        if apply_grad_penalty:
            (gradients,) = torch.autograd.grad(real_logits, real, torch.ones_like(real_logits), create_graph=True)
            loss = loss + GRADIENT_PENALTY_WEIGHT * ((gradients.flatten(1).norm(dim=1) - 1) ** 2).mean()
        return loss

    real, fake = resized(pick_frames(video, frames)), resized(pick_frames(recon, frames))
    perceptual = F.mse_loss(model.vgg(rgb(real)), model.vgg(rgb(fake)))
    generator = hinge_generator_loss(model.discr(fake))
    # balance the generator term against the perceptual one by their gradients at the last layer
    last_layer = model.to_pixels[0].weight
    norms = [torch.autograd.grad(term, last_layer, retain_graph=True)[0].norm() for term in (perceptual, generator)]
    adaptive_weight = (norms[0] / (norms[1] + 1e-8)).clamp(max=MAX_ADAPTIVE_WEIGHT).detach()
    return recon_loss + perceptual + commit + adaptive_weight * generator
