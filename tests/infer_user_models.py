"""Models as users write them in their own repositories, for config inference
(`tests/test_infer_generic.py`, `benchmarks/bench_infer.py`).

Not imported as part of the test suite: each user copies this file into a temporary project as
`mymodels/nets.py` and names the classes by import path (`mymodels.nets:GPT`), as a user would.
"""

import enum
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn


class Attention(nn.Module):
    def __init__(self, dim, heads, dim_head):
        super().__init__()
        inner = heads * dim_head
        self.q_scale = nn.Parameter(torch.ones(dim_head))
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)


class GammaLayerNorm(nn.Module):
    """CT-CLIP's LayerNorm: a `gamma` parameter and a `beta` buffer."""

    def __init__(self, dim):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))
        self.register_buffer("beta", torch.zeros(dim))


class RMSNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))


class MyViT(nn.Module):
    """A CTViT-like encoder: GEGLU and SwiGLU hold the same tensors."""

    def __init__(self, *, dim: int = 512, depth: int = 4, heads: int = 8, dim_head: int = 32,
                 use_rms_norm: bool = False, use_swiglu: bool = False):
        super().__init__()
        norm = RMSNorm if use_rms_norm else GammaLayerNorm
        self.to_patch_emb = nn.Linear(3 * 16 * 16, dim)
        self.layers = nn.ModuleList()
        for _ in range(depth):
            self.layers.append(nn.ModuleList([
                norm(dim), Attention(dim, heads, dim_head), norm(dim),
                nn.Sequential(nn.Linear(dim, dim * 8), nn.Identity(), nn.Linear(dim * 4, dim)),
            ]))
        self.norm_out = norm(dim)


class Block(nn.Module):
    def __init__(self, n_embd, n_head, bias):
        super().__init__()
        assert n_embd % n_head == 0
        self.ln_1 = nn.LayerNorm(n_embd, bias=bias)
        self.attn = nn.ModuleDict(dict(c_attn=nn.Linear(n_embd, 3 * n_embd, bias=bias),
                                       c_proj=nn.Linear(n_embd, n_embd, bias=bias)))
        self.ln_2 = nn.LayerNorm(n_embd, bias=bias)
        self.mlp = nn.ModuleDict(dict(c_fc=nn.Linear(n_embd, 4 * n_embd, bias=bias),
                                      c_proj=nn.Linear(4 * n_embd, n_embd, bias=bias)))


class GPT(nn.Module):
    """nanoGPT's layout; the head count moves no tensor."""

    def __init__(self, n_layer: int = 12, n_head: int = 12, n_embd: int = 768, vocab_size: int = 50304,
                 block_size: int = 1024, bias: bool = True):
        super().__init__()
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.h = nn.ModuleList(Block(n_embd, n_head, bias) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd, bias=bias)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)


class SmallCNN(nn.Module):
    def __init__(self, channels: list[int] = [32, 64, 128], in_channels: int = 3, num_classes: int = 10,
                 kernel_size: int = 3):
        super().__init__()
        layers = []
        previous = in_channels
        for width in channels:
            layers += [nn.Conv2d(previous, width, kernel_size), nn.BatchNorm2d(width), nn.ReLU()]
            previous = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(previous, num_classes)


class Norm(enum.Enum):
    NONE = "none"
    LAYER = "layer"


@dataclass(frozen=True)
class HeadConfig:
    num_classes: int = 10
    bias: bool = True


@dataclass(frozen=True)
class MLPConfig:
    in_features: int = 784
    hidden: tuple[int, ...] = (256, 128)
    activation: Literal["relu", "gelu"] = "relu"
    norm: Norm = Norm.NONE
    dropout: float = 0.1
    head: HeadConfig = field(default_factory=HeadConfig)


class MLP(nn.Module):
    def __init__(self, config: MLPConfig):
        super().__init__()
        layers = []
        previous = config.in_features
        for width in config.hidden:
            layers.append(nn.Linear(previous, width))
            if config.norm is Norm.LAYER:
                layers.append(nn.LayerNorm(width))
            layers.append(nn.GELU() if config.activation == "gelu" else nn.ReLU())
            previous = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(previous, config.head.num_classes, bias=config.head.bias)
