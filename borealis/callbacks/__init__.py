"""Lightning callbacks, one job each.

    curriculum.py   `AugmentationScheduler`: the augmentation stage from training progress (CLI: always on)
    sample_log.py   `SampleLog`: the keys of every trained batch, per rank (opt-in, `trainer.callbacks`)
    nonfinite.py    `NonFiniteSteps`: skip and count optimizer steps with a non-finite loss or gradient
    rng_state.py    `RngState`: every rank's RNG states in checkpoints, restored for an exact resume
    predictions.py  `PredictionWriter`: the JSONL files of `borealis predict`

The last three are installed by `BorealisLightningModule.configure_callbacks`.
"""

from borealis.callbacks.curriculum import AugmentationScheduler
from borealis.callbacks.nonfinite import NonFiniteSteps
from borealis.callbacks.predictions import PredictionWriter
from borealis.callbacks.rng_state import RngState
from borealis.callbacks.sample_log import SampleLog

__all__ = ["AugmentationScheduler", "NonFiniteSteps", "PredictionWriter", "RngState", "SampleLog"]
