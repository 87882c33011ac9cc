"""Config inference for the UNet families: the config that rebuilds a checkpoint's schema (DESIGN §5 step 6).

Only names and shapes are read. Each function returns proposals; the registry accepts one only if
rebuilding it on the meta device gives the schema's exact fingerprint, so a proposal may be wrong,
but for any config the family's fields express the right one is among them. A schema that clearly
is not of the family, or one whose layout the family cannot express (a different number of res
blocks per level, an attention type these UNets do not build, keys no config produces), gives [] at
once: no model is built and torch is not imported here.

What shapes show (LDM name / diffusers name):
- in/out channels and the base width: `input_blocks.0.0` and `out.2` / `conv_in` and `conv_out`;
- the width of every level (channel_mult / block_out_channels) and the number of res blocks per
  level (num_res_blocks / layers_per_block), by walking the res blocks;
- which levels attend (attention_resolutions / the Cross-Attn block types), the transformer depth
  (counted `transformer_blocks`), the context width (`attn2.to_k` input), Linear vs 1x1-conv
  projection (`proj_in` is 2-D or 4-D), scale-shift conditioning (the time projection is twice the
  block's width).

What they do not show, so the family default (or a named guess) is kept:
- the attention head count: heads x head width is the same matrix for every split, so a checkpoint
  cannot say whether it was trained with 8 heads or 64-wide heads (see the functions' docstrings);
- `image_size` / `sample_size`, dropout, norm epsilons, activations, timestep-embedding flips and
  any other flag that moves no tensor.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from registry.families import extend_family
from registry.schema import Schema

from .diffusers_unet import DiffusersUNetConfig
from .ldm_unet import NORM_GROUPS, LDMUNetConfig

Shapes = dict[str, tuple[int, ...]]

# Heads are invisible, so proposals follow practice: Stable Diffusion 1.x fixes 8 heads and projects
# with 1x1 convolutions; SD 2.x and SDXL fix 64-wide heads and project with Linear layers.
SD1_HEADS = 8
SD2_HEAD_WIDTH = 64
# SDXL's `addition_time_embed_dim`: it sizes a parameter-free sinusoidal embedding, so it is invisible.
SDXL_ADDITION_TIME_EMBED_DIM = 256

LDM_TOP_LEVEL = {"time_embed", "input_blocks", "middle_block", "output_blocks", "out"}
DIFFUSERS_TOP_LEVEL = {
    "conv_in", "conv_out", "conv_norm_out", "time_embedding", "down_blocks", "mid_block", "up_blocks",
    "class_embedding", "add_embedding", "encoder_hid_proj",
}


def _shapes(schema: Schema) -> Shapes:
    return {entry.name: entry.shape for entry in schema}


def _top_level(shapes: Shapes) -> set[str]:
    return {name.split(".", 1)[0] for name in shapes}


def _children(shapes: Shapes, prefix: str) -> list[int]:
    """The numeric child indices under `prefix` (`"down_blocks."` -> [0, 1, 2, 3])."""
    found = set()
    for name in shapes:
        if name.startswith(prefix):
            head = name[len(prefix):].split(".", 1)[0]
            if head.isdigit():
                found.add(int(head))
    return sorted(found)


def _has_under(shapes: Shapes, prefix: str) -> bool:
    return any(name.startswith(prefix) for name in shapes)


def _names_under(shapes: Shapes, prefix: str) -> list[str]:
    return [name[len(prefix):] for name in shapes if name.startswith(prefix)]


def _contiguous(indices: list[int]) -> bool:
    return indices == list(range(len(indices)))


def _transformer(shapes: Shapes, prefix: str) -> dict[str, Any] | None:
    """What a SpatialTransformer / Transformer2DModel at `prefix` shows, or None if there is none.

    `inner` is heads x head width: the `proj_in` output, which is not always the block's width.
    """
    proj_in = shapes.get(prefix + "proj_in.weight")
    to_k = shapes.get(prefix + "transformer_blocks.0.attn2.to_k.weight")
    if proj_in is None or to_k is None or len(proj_in) not in (2, 4):
        return None
    return {
        "inner": proj_in[0],
        "depth": len(_children(shapes, prefix + "transformer_blocks.")),
        "context_dim": to_k[1],
        "linear": len(proj_in) == 2,
    }


def _one(values: Iterable[Any]) -> Any:
    """The single distinct value, or None when there are none or several."""
    distinct = set(values)
    return distinct.pop() if len(distinct) == 1 else None


# --- ldm-unet ----------------------------------------------------------------------------------


def _ldm_levels(shapes: Shapes) -> list[list[tuple[int, bool]]] | None:
    """Per level, each res block's (output width, followed by a transformer) on the way down."""
    blocks = _children(shapes, "input_blocks.")
    if not _contiguous(blocks):
        return None
    levels: list[list[tuple[int, bool]]] = [[]]
    for index in blocks[1:]:  # block 0 is the input convolution
        prefix = f"input_blocks.{index}."
        if prefix + "0.op.weight" in shapes:
            levels.append([])
        elif prefix + "0.in_layers.2.weight" in shapes:
            width = shapes[prefix + "0.in_layers.2.weight"][0]
            levels[-1].append((width, prefix + "1.proj_in.weight" in shapes))
        else:
            return None
    return levels


def infer_ldm_unet_configs(schema: Schema) -> list[LDMUNetConfig]:
    """`ldm-unet` configs that may rebuild `schema`, most likely first; [] if it is not an LDM UNet.

    Every layout field is read from shapes. The attention heads are NOT: heads x head width is the
    same projection matrix for any split, so the head setting of a proposal is a guess that must be
    confirmed before the variant is trusted for inference or fine-tuning. Proposals differ only in
    heads, in this order: with Linear projections (SD 2.x) `num_head_channels=64` then `num_heads=8`,
    with 1x1-conv projections (SD 1.x) the reverse; a setting the config rejects (widths not
    divisible) is left out, and `num_heads=8` always fits (widths are multiples of 32). All
    proposals build the same schema, so the registry's first verified one is the most likely.
    `image_size` is invisible: the family default (64), rounded up to a multiple of the deepest
    downsampling when 64 is not one. Raises nothing.
    """
    shapes = _shapes(schema)
    conv_in, conv_out = shapes.get("input_blocks.0.0.weight"), shapes.get("out.2.weight")
    middle = _transformer(shapes, "middle_block.1.")
    emb, res_out = shapes.get("middle_block.0.emb_layers.1.weight"), shapes.get("middle_block.0.in_layers.2.weight")
    if conv_in is None or conv_out is None or middle is None or emb is None or res_out is None:
        return []
    if len(conv_in) != 4 or len(conv_out) != 4 or not _top_level(shapes) <= LDM_TOP_LEVEL:
        return []
    levels = _ldm_levels(shapes)
    if not levels:
        return []
    model_channels = conv_in[0]
    num_res_blocks = _one(len(level) for level in levels)
    widths = [_one(width for width, _ in level) for level in levels]
    attends = [_one(attends for _, attends in level) for level in levels]
    # one block count, one width and one attention choice per level is all this config can say
    if not num_res_blocks or None in widths or None in attends:
        return []
    if any(width % model_channels for width in widths):
        return []
    deepest = 2 ** (len(levels) - 1)
    default_size = LDMUNetConfig().image_size
    fields = dict(
        image_size=math.ceil(default_size / deepest) * deepest,
        in_channels=conv_in[1],
        out_channels=conv_out[0],
        model_channels=model_channels,
        num_res_blocks=num_res_blocks,
        # LDM YAMLs list the factors deepest first ([4, 2, 1]); the order changes nothing
        attention_resolutions=tuple(2**level for level in reversed(range(len(levels))) if attends[level]),
        channel_mult=tuple(width // model_channels for width in widths),
        use_scale_shift_norm=emb[0] == 2 * res_out[0],
        transformer_depth=middle["depth"],
        context_dim=middle["context_dim"],
        use_linear_in_transformer=middle["linear"],
    )
    heads = [
        {"num_heads": SD1_HEADS, "num_head_channels": -1},
        {"num_heads": -1, "num_head_channels": SD2_HEAD_WIDTH},
    ]
    if middle["linear"]:
        heads.reverse()
    configs = []
    for head in heads:
        try:
            configs.append(LDMUNetConfig(**fields, **head))
        except ValueError:  # widths this config rejects (first multiplier not 1, heads not dividing, ...)
            continue
    return configs


# --- diffusers-unet ----------------------------------------------------------------------------


def _diffusers_block(shapes: Shapes, prefix: str, resampler: str) -> dict[str, Any] | None:
    """Res block count, output width, time-projection width and attention of one down/up block.

    None when the block holds anything a (CrossAttn)DownBlock2D / (CrossAttn)UpBlock2D does not.
    """
    parts = {name[len(prefix):].split(".", 1)[0] for name in shapes if name.startswith(prefix)}
    if not parts <= {"resnets", "attentions", resampler}:
        return None
    resnets = _children(shapes, prefix + "resnets.")
    conv1 = shapes.get(prefix + "resnets.0.conv1.weight")
    time_proj = shapes.get(prefix + "resnets.0.time_emb_proj.weight")
    if not resnets or not _contiguous(resnets) or conv1 is None or time_proj is None:
        return None
    attention = None
    if "attentions" in parts:
        attention = _transformer(shapes, prefix + "attentions.0.")
        if attention is None:  # self-attention-only blocks and other kinds: not these block types
            return None
    return {"layers": len(resnets), "width": conv1[0], "time_proj": time_proj[0], "attention": attention}


def _mid_block(shapes: Shapes) -> tuple[str | None, dict[str, Any] | None] | None:
    """(mid_block_type, its attention), or None for a middle block this family's types do not build."""
    if not _has_under(shapes, "mid_block."):
        return None, None
    attention = _transformer(shapes, "mid_block.attentions.0.")
    if attention is not None:
        return "UNetMidBlock2DCrossAttn", attention
    if _has_under(shapes, "mid_block.attentions."):
        return None
    return "UNetMidBlock2D", None  # diffusers builds it without attention inside a conditional UNet


def _norm_groups(shapes: Shapes) -> int:
    """A GroupNorm group count that fits every normalized width: 32 (the default) when it can.

    The group count is invisible; only its divisibility matters to rebuilding.
    """
    widths = [
        shape[0]
        for name, shape in shapes.items()
        if name == "conv_norm_out.weight"
        or (".resnets." in name and name.endswith((".norm1.weight", ".norm2.weight")))
        or (".attentions." in name and name.endswith(".norm.weight") and ".transformer_blocks." not in name)
    ]
    common = math.gcd(*widths) if widths else NORM_GROUPS
    return max(groups for groups in range(1, NORM_GROUPS + 1) if common % groups == 0)


def _head_proposals(widths: list[int], inner: dict[int, int], linear: bool) -> list[int | tuple[int, ...]]:
    """`attention_head_dim` values (diffusers reads it as heads per level) that give each level's inner width.

    A level of width c with h heads has h * (c // h) attention channels, so heads are visible only
    when that is not c. SD 1.x style (8 heads) and SD 2.x/SDXL style (64-wide heads) come first, in
    the order the projection kind suggests; if neither fits, a per-level count that does.
    """

    def fits(heads: list[int]) -> bool:
        return all(heads[level] * (widths[level] // heads[level]) == want for level, want in inner.items())

    styles = [[SD1_HEADS] * len(widths), [max(width // SD2_HEAD_WIDTH, 1) for width in widths]]
    if linear:
        styles.reverse()
    proposals = [heads for heads in styles if fits(heads)]
    if not proposals:
        fallback = []
        for level, width in enumerate(widths):
            options = [SD1_HEADS, max(width // SD2_HEAD_WIDTH, 1), *range(1, width + 1)]
            heads = next((h for h in options if level not in inner or h * (width // h) == inner[level]), None)
            if heads is None:  # an attention width no head count gives at this level
                return []
            fallback.append(heads)
        proposals = [fallback]
    unique: list[int | tuple[int, ...]] = []
    for heads in proposals:
        value = heads[0] if len(set(heads)) == 1 else tuple(heads)
        if value not in unique:
            unique.append(value)
    return unique


def _diffusers_extra(shapes: Shapes, time_dim: int, base_width: int) -> dict[str, Any] | None:
    """`extra` arguments for the optional embeddings the schema holds; None for kinds not handled."""
    extra: dict[str, Any] = {}
    if time_dim != 4 * base_width:
        extra["time_embedding_dim"] = time_dim
    if "time_embedding.cond_proj.weight" in shapes:  # latent-consistency UNets' guidance embedding
        extra["time_cond_proj_dim"] = shapes["time_embedding.cond_proj.weight"][1]
    if _has_under(shapes, "class_embedding."):
        if set(_names_under(shapes, "class_embedding.")) != {"weight"}:
            return None  # timestep/projection class embeddings: not told apart by shapes, not handled
        extra["num_class_embeds"] = shapes["class_embedding.weight"][0]
    if _has_under(shapes, "add_embedding."):
        if set(_names_under(shapes, "add_embedding.")) != {"linear_1.weight", "linear_1.bias", "linear_2.weight",
                                                         "linear_2.bias"}:
            return None
        extra["addition_embed_type"] = "text_time"  # SDXL's size and crop conditioning
        extra["addition_time_embed_dim"] = SDXL_ADDITION_TIME_EMBED_DIM
        extra["projection_class_embeddings_input_dim"] = shapes["add_embedding.linear_1.weight"][1]
    if _has_under(shapes, "encoder_hid_proj."):
        if set(_names_under(shapes, "encoder_hid_proj.")) != {"weight", "bias"}:
            return None
        extra["encoder_hid_dim_type"] = "text_proj"
        extra["encoder_hid_dim"] = shapes["encoder_hid_proj.weight"][1]
    return extra


def infer_diffusers_unet_configs(schema: Schema) -> list[DiffusersUNetConfig]:
    """`diffusers-unet` configs that may rebuild `schema`, most likely first; [] if it is not such a UNet.

    Handles UNet2DConditionModels made of DownBlock2D / CrossAttnDownBlock2D, UpBlock2D /
    CrossAttnUpBlock2D and a UNetMidBlock2DCrossAttn, UNetMidBlock2D or no middle block, with
    per-level transformer depths (SDXL), and the embeddings `class_embedding` (an `nn.Embedding`),
    `add_embedding` (SDXL's `text_time`), `encoder_hid_proj` (`text_proj`) and `time_embedding.cond_proj`.
    Anything else (other block types, asymmetric up/down depths, per-level res-block counts) gives [].

    The attention heads are NOT recoverable from shapes when every level's width divides by them,
    which is the usual case: the proposals then differ only in `attention_head_dim` (which diffusers
    reads as the head count), SD 1.x's 8 heads first with conv projections, SD 2.x/SDXL's 64-wide
    heads (`width // 64` per level) first with Linear projections. Each builds the same schema, so
    the head count of the inferred variant is a guess that must be confirmed. Also invisible, so
    guessed: `sample_size` (kept None, the default), `norm_num_groups` (32 when widths allow, else the
    largest divisor that fits), and SDXL's `addition_time_embed_dim` (256). Raises nothing.
    """
    shapes = _shapes(schema)
    conv_in, conv_out = shapes.get("conv_in.weight"), shapes.get("conv_out.weight")
    time = shapes.get("time_embedding.linear_1.weight")
    if conv_in is None or conv_out is None or time is None or "conv_norm_out.weight" not in shapes:
        return []
    if len(conv_in) != 4 or len(conv_out) != 4 or not _top_level(shapes) <= DIFFUSERS_TOP_LEVEL:
        return []
    down_indices, up_indices = _children(shapes, "down_blocks."), _children(shapes, "up_blocks.")
    if not down_indices or not _contiguous(down_indices) or up_indices != down_indices:
        return []
    down = [_diffusers_block(shapes, f"down_blocks.{i}.", "downsamplers") for i in down_indices]
    up = [_diffusers_block(shapes, f"up_blocks.{i}.", "upsamplers") for i in up_indices]
    mid = _mid_block(shapes)
    if None in down or None in up or mid is None:
        return []
    mid_type, mid_attention = mid
    levels = len(down)
    widths = [block["width"] for block in down]
    layers = _one(block["layers"] for block in down)
    if layers is None or conv_in[0] != widths[0] or time[1] != widths[0]:
        return []

    # (level, attention) for every transformer; up block j and the middle block map onto levels
    observed = [(i, block["attention"]) for i, block in enumerate(down) if block["attention"]]
    observed += [(levels - 1 - j, block["attention"]) for j, block in enumerate(up) if block["attention"]]
    if mid_attention:
        observed.append((levels - 1, mid_attention))
    depths: dict[int, int] = {}
    inner: dict[int, int] = {}
    for level, attention in observed:
        # one depth and one head split per level serve its down, up and middle transformers alike
        if depths.setdefault(level, attention["depth"]) != attention["depth"]:
            return []
        if inner.setdefault(level, attention["inner"]) != attention["inner"]:
            return []
    linear = _one(attention["linear"] for _, attention in observed)
    context_dim = _one(attention["context_dim"] for _, attention in observed)
    if observed and (linear is None or context_dim is None):
        return []
    extra = _diffusers_extra(shapes, time[0], widths[0])
    if extra is None:
        return []
    per_level_depth = [depths.get(level, 1) for level in range(levels)]
    default = DiffusersUNetConfig()
    fields = dict(
        in_channels=conv_in[1],
        out_channels=conv_out[0],
        down_block_types=tuple("CrossAttnDownBlock2D" if b["attention"] else "DownBlock2D" for b in down),
        mid_block_type=mid_type,
        up_block_types=tuple("CrossAttnUpBlock2D" if b["attention"] else "UpBlock2D" for b in up),
        block_out_channels=tuple(widths),
        layers_per_block=layers,
        norm_num_groups=_norm_groups(shapes),
        cross_attention_dim=default.cross_attention_dim if context_dim is None else context_dim,
        transformer_layers_per_block=per_level_depth[0] if len(set(per_level_depth)) == 1 else tuple(per_level_depth),
        use_linear_projection=bool(linear),
        resnet_time_scale_shift="scale_shift" if down[0]["time_proj"] == 2 * widths[0] else "default",
        conv_in_kernel=conv_in[2],
        conv_out_kernel=conv_out[2],
    )
    configs = []
    for heads in _head_proposals(widths, inner, bool(linear)):
        try:
            configs.append(DiffusersUNetConfig(**fields, attention_head_dim=heads, extra=dict(extra)))
        except ValueError:
            continue
    return configs


extend_family("ldm-unet", infer_configs=infer_ldm_unet_configs)
extend_family("diffusers-unet", infer_configs=infer_diffusers_unet_configs)
