"""Audio-to-LLM adapters: frame stacking and the MLP projectors.

The reference model stacks k = 4 Whisper frames (1500 x 1280 -> 375 x 5120 for 30 s) and
projects them with a bias-free Linear -> GELU -> Linear of 19.66M parameters, the same shape
as Voxtral's projector. Stacking is a view (after padding to a multiple of k), so it costs
nothing; the adapter is ~0.4% of the 5B model's FLOPs.

`AudioLanguageAdapterDeep` (~80M at Borealis-5B shapes) is the reference write-up's
ablation: three pre-norm residual MLP blocks between the same input and output projections.
"""

from __future__ import annotations

import torch
from torch import nn


def stack_frames(hidden: torch.Tensor, factor: int) -> torch.Tensor:
    """Concatenate every `factor` consecutive frames.

    Args:
        hidden: (B, T, D) encoder states.
        factor: k, frames per output step.

    Returns:
        (B, ceil(T / k), k * D); the tail is zero-padded to a multiple of k.
    """
    b, t, d = hidden.shape
    pad = (-t) % factor
    if pad:
        hidden = nn.functional.pad(hidden, (0, 0, 0, pad))
    return hidden.reshape(b, (t + pad) // factor, factor * d)


class AudioLanguageAdapter(nn.Module):
    """Linear(k*D -> H, no bias) -> GELU -> Linear(H -> H, no bias).

    Parameter names (`w_in`, `w_out`) follow the reference module, so its checkpoints load.

    Args:
        input_dim: k * D, the stacked encoder width (5120 for large-v3, k = 4).
        output_dim: H, the LLM hidden size (2560 for Qwen3-4B).
    """

    def __init__(self, input_dim: int, output_dim: int) -> None:
        super().__init__()
        self.w_in = nn.Linear(input_dim, output_dim, bias=False)
        self.gelu = nn.GELU()
        self.w_out = nn.Linear(output_dim, output_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, k*D) -> (B, N, H)."""
        return self.w_out(self.gelu(self.w_in(x)))


class _ResidualMLPBlock(nn.Module):
    def __init__(self, dim: int, expansion: float, dropout: float) -> None:
        super().__init__()
        inner = int(dim * expansion)
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, inner)
        self.fc2 = nn.Linear(inner, dim)
        self.act = nn.GELU()
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.dropout(self.fc2(self.act(self.fc1(self.norm(x)))))


class AudioLanguageAdapterDeep(nn.Module):
    """w_in -> 3 x [LayerNorm -> Linear -> GELU -> Linear -> dropout, + residual] -> LayerNorm -> w_out.

    Args:
        input_dim: k * D, the stacked encoder width.
        output_dim: H, the LLM hidden size.
        num_blocks: residual MLP blocks (3 in the reference ablation).
        expansion: hidden width of each block's MLP as a multiple of H (1.5 in the reference ablation).
        dropout: dropout after each block's MLP.
    """

    def __init__(self, input_dim: int, output_dim: int, num_blocks: int = 3, expansion: float = 1.5,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.w_in = nn.Linear(input_dim, output_dim, bias=False)
        self.blocks = nn.ModuleList(_ResidualMLPBlock(output_dim, expansion, dropout) for _ in range(num_blocks))
        self.norm = nn.LayerNorm(output_dim)
        self.w_out = nn.Linear(output_dim, output_dim, bias=False)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, k*D) -> (B, N, H)."""
        x = self.w_in(x)
        for block in self.blocks:
            x = block(x)
        return self.w_out(self.norm(x))


ADAPTERS = {"simple": AudioLanguageAdapter, "deep": AudioLanguageAdapterDeep}
