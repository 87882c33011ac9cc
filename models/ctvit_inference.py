"""Config inference for the `ctvit` family: which `CTViTConfig` builds a given schema (DESIGN §5 step 6).

Every layout field is read off a shape or a name; nothing is guessed where the shapes decide. The
registry rebuilds each proposal on the meta device and keeps it only if the fingerprint is equal,
so a proposal that reads a schema wrongly is dropped, never trusted.
"""

from __future__ import annotations

import math
import re

from registry.families import extend_family
from registry.schema import Schema

from .ctvit import CTViTConfig

# The top-level modules of a CTViT state dict; a schema with any other top-level name is not one.
TOP_LEVEL = frozenset({
    "spatial_rel_pos_bias", "to_patch_emb_first_frame", "to_patch_emb", "enc_spatial_transformer",
    "enc_temporal_transformer", "vq", "dec_spatial_transformer", "dec_temporal_transformer",
    "to_pixels_first_frame", "to_pixels", "vgg", "discr",
})
REQUIRED = ("vq._codebook.embed", "to_patch_emb.2.weight", "to_patch_emb_first_frame.2.weight")

# CT-CLIP's published CTViTs: (patch_size, temporal_patch_size) of the v2 and v1 scripts, both at
# dim 512 on one-channel 480x480 slices (shared/reference/ctclip_wrapper_keys.md).
CTCLIP_PATCHES = {(20, 10), (30, 15)}
CTCLIP_DIM, CTCLIP_IMAGE_SIZE = 512, 480
# Elsewhere the image size is a placeholder: a 4x4 token grid, as the tiny variants use.
FALLBACK_GRID = 4
# The discriminator's widths saturate here (`Discriminator(max_dim=512)`, not a config field).
DISCR_MAX_DIM = 512


def infer_ctvit_configs(schema: Schema) -> list[CTViTConfig]:
    """Configs that should rebuild `schema` exactly, most plausible first; [] when it is no CTViT.

    Returns [] without building anything when the schema has an entry outside CTViT's top-level
    modules, lacks the codebook or patch embeddings, or has shapes no config produces. Otherwise
    returns two configs that differ only in `use_swiglu`: False first, then True. Nothing is raised.

    Read from the shapes: `dim` and `codebook_size` (`vq._codebook.embed` [1, codebook, dim]), the
    depths (layers of the encoder transformers), `dim_head` (`q_scale`) and `heads` (`to_q` or the
    fused `to_qkv`), `use_flash_attention` (`to_qkv`), `use_rms_norm` (`norm_out.weight` rather than
    `gamma`), `with_decoder` (`dec_*`), `temporal_patch_size` (the ratio of the two patch
    embeddings' in-features), and with `use_vgg_and_gan` the `vgg_*` widths, `channels`,
    `discr_image_size` (the number of blocks) and which resolutions have attention.

    Not recoverable, so the registry's verification proves the schema and nothing more:
    - `image_size`: no shape depends on it (the position bias is continuous, the discriminator has
      its own size). 480 is proposed for CT-CLIP's own configurations (dim 512, one channel, patch
      20/temporal 10 or 30/15); anywhere else `FALLBACK_GRID` patches per side, a placeholder to
      correct before training.
    - `use_swiglu`: GEGLU and SwiGLU have no parameters, so both readings are returned.
    - `channels` vs `patch_size` without the discriminator: only channels·patch_size² is visible.
      Channels 1 or 3 are read exactly (at most one of them fits); otherwise the fewest channels
      that fit are proposed. A 4-channel model with 4-pixel patches reads as 1 channel with 8.
    - `discr_base_dim` once the discriminator's first width saturates at 512 (any base ≥ 128 gives
      the same shapes; 128 is proposed), and `discr_attn_res_layers` entries that match no block
      resolution (the visible ones are proposed, largest first).
    - `discr_*` and `vgg_*` without `use_vgg_and_gan`: they build nothing, so they keep their defaults.
    """
    names = schema.by_name
    if not names or any(name.split(".", 1)[0] not in TOP_LEVEL for name in names):
        return []
    if any(name not in names for name in REQUIRED):
        return []
    try:
        layout = _layout(schema)
    except _NotCTViT:
        return []
    configs = []
    for use_swiglu in (False, True):
        try:
            configs.append(CTViTConfig(**layout, use_swiglu=use_swiglu))
        except ValueError:  # shapes no valid config produces (e.g. 2 channels with a discriminator)
            return []
    return configs


class _NotCTViT(Exception):
    """The schema's shapes contradict the CTViT layout (internal: `infer_ctvit_configs` returns [])."""


def _shape(schema: Schema, name: str, rank: int) -> tuple[int, ...]:
    """The shape of entry `name`, which must exist and have `rank` dimensions."""
    entry = schema.by_name.get(name)
    if entry is None or len(entry.shape) != rank:
        raise _NotCTViT(f"no {name} of rank {rank}")
    return entry.shape


def _indices(schema: Schema, prefix: str) -> list[int]:
    """The distinct N of entries named `prefix` + `N.` ..., sorted."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for name in schema.by_name if (m := pattern.match(name))})


def _exact_quotient(numerator: int, denominator: int) -> int:
    if denominator <= 0 or numerator % denominator:
        raise _NotCTViT(f"{numerator} is not a multiple of {denominator}")
    return numerator // denominator


def _layout(schema: Schema) -> dict:
    """Every config field the shapes decide (and placeholders for the rest), `use_swiglu` excepted."""
    names = schema.by_name
    codebooks, codebook_size, dim = _shape(schema, "vq._codebook.embed", 3)
    if codebooks != 1:
        raise _NotCTViT("one codebook expected")

    attention = "enc_spatial_transformer.layers.0.1."
    dim_head = _shape(schema, attention + "q_scale", 1)[0]
    use_flash_attention = attention + "to_qkv.weight" in names
    if use_flash_attention:
        heads = _exact_quotient(_shape(schema, attention + "to_qkv.weight", 2)[0], 3 * dim_head)
    else:
        heads = _exact_quotient(_shape(schema, attention + "to_q.weight", 2)[0], dim_head)

    if "enc_spatial_transformer.norm_out.weight" in names:
        use_rms_norm = True
    elif "enc_spatial_transformer.norm_out.gamma" in names:
        use_rms_norm = False
    else:
        raise _NotCTViT("no norm_out")

    frame_patch_dim = _shape(schema, "to_patch_emb_first_frame.2.weight", 2)[1]
    temporal_patch_size = _exact_quotient(_shape(schema, "to_patch_emb.2.weight", 2)[1], frame_patch_dim)

    has_vgg = any(name.startswith("vgg.") for name in names)
    has_discr = any(name.startswith("discr.") for name in names)
    if has_vgg != has_discr:
        raise _NotCTViT("vgg and discr come together")
    gan = _gan_layout(schema) if has_discr else {}
    channels, patch_size = _channels_and_patch(frame_patch_dim, gan.get("channels"))

    layout = dict(
        dim=dim,
        codebook_size=codebook_size,
        image_size=_image_size(dim=dim, channels=channels, patch_size=patch_size, temporal_patch_size=temporal_patch_size),
        patch_size=patch_size,
        temporal_patch_size=temporal_patch_size,
        spatial_depth=len(_indices(schema, "enc_spatial_transformer.layers.")),
        temporal_depth=len(_indices(schema, "enc_temporal_transformer.layers.")),
        dim_head=dim_head,
        heads=heads,
        channels=channels,
        use_rms_norm=use_rms_norm,
        use_flash_attention=use_flash_attention,
        with_decoder=any(name.startswith("dec_spatial_transformer.") for name in names),
        use_vgg_and_gan=has_discr,
    )
    return {**layout, **gan}


def _channels_and_patch(frame_patch_dim: int, channels: int | None) -> tuple[int, int]:
    """(channels, patch_size) with channels·patch_size² = `frame_patch_dim`; `channels` if known.

    Unknown channels: 1 if that fits, else 3, else the fewest that fit (one of 1 and 3 at most
    fits, since 3 is not a square).
    """
    candidates = [channels] if channels is not None else [1, 3, *range(2, frame_patch_dim + 1)]
    for count in candidates:
        if count > 0 and frame_patch_dim % count == 0:
            patch = math.isqrt(frame_patch_dim // count)
            if patch * patch * count == frame_patch_dim:
                return count, patch
    raise _NotCTViT(f"{frame_patch_dim} is not channels x patch_size^2")


def _image_size(*, dim: int, channels: int, patch_size: int, temporal_patch_size: int) -> int:
    """A placeholder: no shape depends on the image size (see `infer_ctvit_configs`)."""
    ctclip = dim == CTCLIP_DIM and channels == 1 and (patch_size, temporal_patch_size) in CTCLIP_PATCHES
    return CTCLIP_IMAGE_SIZE if ctclip else patch_size * FALLBACK_GRID


def _gan_layout(schema: Schema) -> dict:
    """The `channels`, `discr_*` and `vgg_*` fields read from the `discr.*` and `vgg.*` entries."""
    blocks = _indices(schema, "discr.blocks.")
    if blocks != list(range(len(blocks))) or len(blocks) < 2:
        raise _NotCTViT("discriminator blocks")
    # blocks = log2(image_size) - 1: each halves the resolution down to a 4x4 grid, the last keeps it
    discr_image_size = 2 ** (len(blocks) + 1)
    first_width, channels = _shape(schema, "discr.blocks.0.conv_res.weight", 4)[:2]
    # first width = min(4 * base, 512): below 512 it gives the base, at 512 only a lower bound
    discr_base_dim = _exact_quotient(first_width, 4) if first_width < DISCR_MAX_DIM else DISCR_MAX_DIM // 4
    attention_resolutions = tuple(discr_image_size >> index for index in _indices(schema, "discr.attn_blocks."))

    vgg_base_dim = _shape(schema, "vgg.features.0.weight", 4)[0]
    vgg_hidden_dim = _shape(schema, "vgg.classifier.0.weight", 2)[0]
    return dict(
        channels=channels,
        discr_image_size=discr_image_size,
        discr_base_dim=discr_base_dim,
        discr_attn_res_layers=attention_resolutions,
        vgg_base_dim=vgg_base_dim,
        vgg_hidden_dim=vgg_hidden_dim,
    )


extend_family("ctvit", infer_configs=infer_ctvit_configs)
