"""Lightning callbacks, one job each.

    curriculum.py     `AugmentationScheduler`: the augmentation stage from training progress (CLI: always on)
    sample_log.py     `SampleLog`: the keys of every trained batch, per rank (opt-in, `trainer.callbacks`)
    nonfinite.py      `NonFiniteSteps`: skip and count optimizer steps with a non-finite loss or gradient
    rng_state.py      `RngState`: every rank's RNG states in checkpoints, restored for an exact resume
    predictions.py    `PredictionWriter`: the JSONL files of `borealis predict`
    learning_curve.py `LearningCurve`: loss and WER against steps, a PNG + JSON beside wer.json

The last four are installed by `BorealisLightningModule.configure_callbacks`.
"""

from borealis.callbacks.curriculum import AugmentationScheduler
from borealis.callbacks.learning_curve import LearningCurve
from borealis.callbacks.nonfinite import NonFiniteSteps
from borealis.callbacks.predictions import PredictionWriter
from borealis.callbacks.rng_state import RngState
from borealis.callbacks.sample_log import SampleLog

__all__ = ["AugmentationScheduler", "LearningCurve", "NonFiniteSteps", "PredictionWriter", "RngState", "SampleLog"]
