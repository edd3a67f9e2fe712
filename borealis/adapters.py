"""Audio-to-LLM adapters: frame stacking and the MLP projectors.

The implementation is `borealis.hf_remote.adapters_borealis`, the copy every exported model
ships (see its docstring for the shapes and the cost); this module is its name in the package.
Choose one with the model's `adapter:` setting (`simple` or `deep`).
"""

from borealis.hf_remote.adapters_borealis import (ADAPTERS, AudioLanguageAdapter, AudioLanguageAdapterDeep,
                                                  stack_frames)

__all__ = ["ADAPTERS", "AudioLanguageAdapter", "AudioLanguageAdapterDeep", "stack_frames"]
