"""Whisper log-mel features in torch, batched, on the model's device.

The implementation is `borealis.hf_remote.features_borealis`, the copy every exported model
ships (see its docstring for the why and the cost); this module is its name in the package.
"""

from borealis.hf_remote.features_borealis import (HOP_LENGTH, N_FFT, SAMPLE_RATE, WhisperLogMel, num_mel_frames,
                                                  window_frames)

__all__ = ["HOP_LENGTH", "N_FFT", "SAMPLE_RATE", "WhisperLogMel", "num_mel_frames", "window_frames"]
