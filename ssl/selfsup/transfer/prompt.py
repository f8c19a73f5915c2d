"""Visual prompt tuning (Jia et al. 2022, "Visual Prompt Tuning"), the vision counterpart of prefix tuning
(Li & Liang 2021): N learnable tokens inserted between a frozen timm ViT's prefix (class) tokens and its
patch tokens, at the input (VPT-shallow) or anew before every block (VPT-deep), and removed before the
final norm and pooling so a ``global_pool='avg'`` ViT still averages its patch tokens only.
"""

from __future__ import annotations

import math
from functools import reduce
from operator import mul

import torch
from torch import Tensor, nn


class PromptedViT(nn.Module):
    """A timm VisionTransformer (``num_classes=0``) with prompt tokens: images ``[B, C, H, W]`` -> pooled
    features ``[B, D]``, as ``vit(x)`` with the prompts in the sequence. ``prompts`` is ``[L, N, D]`` (L = 1
    shallow, the block count deep). With ``num_tokens=0`` it computes exactly ``vit(x)``."""

    def __init__(self, vit: nn.Module, num_tokens: int, deep: bool = False) -> None:
        super().__init__()
        self.vit, self.num_tokens, self.deep = vit, num_tokens, deep
        dim, layers = vit.embed_dim, len(vit.blocks) if deep else 1
        patch = vit.patch_embed.patch_size
        # VPT's init: uniform(-v, v), v = sqrt(6 / (3 * patch area + D)) (xavier-uniform over the patch projection)
        bound = math.sqrt(6.0 / float(3 * reduce(mul, patch, 1) + dim))
        self.prompts = nn.Parameter(torch.empty(layers, num_tokens, dim).uniform_(-bound, bound))  # [L, N, D]

    def _insert(self, x: Tensor, i: int) -> Tensor:
        """``x`` ``[B, P + T, D]`` (prefix, patch tokens) -> ``[B, P + N + T, D]`` with layer ``i``'s prompts."""
        p = self.vit.num_prefix_tokens
        prompts = self.prompts[i].unsqueeze(0).expand(x.shape[0], -1, -1).to(x.dtype)  # [B, N, D]
        return torch.cat([x[:, :p], prompts, x[:, p:]], dim=1)

    def _remove(self, x: Tensor) -> Tensor:
        """``[B, P + N + T, D]`` -> ``[B, P + T, D]``."""
        p = self.vit.num_prefix_tokens
        return torch.cat([x[:, :p], x[:, p + self.num_tokens:]], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        vit = self.vit
        x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))  # [B, P + T, D]
        x = self._insert(x, 0)  # [B, P + N + T, D]
        for i, block in enumerate(vit.blocks):
            if self.deep and i > 0:
                x = self._insert(self._remove(x), i)  # VPT-deep: the previous block's prompt outputs dropped
            x = block(x)
        x = vit.norm(self._remove(x))  # [B, P + T, D]
        return vit.forward_head(x, pre_logits=True)  # [B, D]
