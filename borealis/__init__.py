"""Borealis: a Lightning training system for Russian/English audio-language models.

Whisper-large-v3 encoder (frozen) -> 4x frame stacking -> MLP adapter -> Qwen3 with LoRA.
See README.md for the commands and shared DESIGN.md for the architecture.
"""

__version__ = "0.1.0"
