"""ISRG trainer variants, nnU-Net style: each is a short subclass that changes one thing.

Ablations (paper Tables 2-3): Vanilla, +Point Refinement, +Feature Synergy; Full is ``ISRGTrainer``.
``_Tiny`` variants use the CPU-sized preset and a short schedule (``_Tiny_20epochs`` a shorter one,
for cross-validating real datasets on a CPU); ``_Debug`` runs a few iterations for tests.
"""
from __future__ import annotations

from nnunet_isrg.training.isrg_trainer import ISRGTrainer

__all__ = [
    "ISRGTrainer_Vanilla", "ISRGTrainer_PointRefinement", "ISRGTrainer_FeatureSynergy",
    "ISRGTrainer_Tiny", "ISRGTrainer_Tiny_Vanilla", "ISRGTrainer_Tiny_PointRefinement",
    "ISRGTrainer_Tiny_FeatureSynergy", "ISRGTrainer_Tiny_FixedLambda", "ISRGTrainer_Tiny_RawWeights", "ISRGTrainer_Debug",
    "ISRGTrainer_Debug_Vanilla", "ISRGTrainer_50epochs", "ISRGTrainer_Tiny_50epochs",
    "ISRGTrainer_Tiny_150epochs", "ISRGTrainer_Tiny_20epochs",
]


class ISRGTrainer_Vanilla(ISRGTrainer):
    point_refinement = False
    feature_synergy = False


class ISRGTrainer_PointRefinement(ISRGTrainer):
    feature_synergy = False


class ISRGTrainer_FeatureSynergy(ISRGTrainer):
    point_refinement = False


class _TinySchedule:
    """CPU budget: 36 epochs x 50 iterations (1,800 iterations, about 16 min on 2 cores), tiny preset."""

    model_preset = "tiny"
    epochs = 36
    iterations_per_epoch = 50
    val_iterations_per_epoch = 5
    learning_rate = 1e-3
    warmup_epochs = 2
    checkpoint_every = 10
    weight_average_decay = 0.99   # about the last 100 of 1,800 iterations


class ISRGTrainer_Tiny(_TinySchedule, ISRGTrainer):
    pass


class ISRGTrainer_Tiny_Vanilla(_TinySchedule, ISRGTrainer_Vanilla):
    pass


class ISRGTrainer_Tiny_PointRefinement(_TinySchedule, ISRGTrainer_PointRefinement):
    pass


class ISRGTrainer_Tiny_FeatureSynergy(_TinySchedule, ISRGTrainer_FeatureSynergy):
    pass


class ISRGTrainer_Tiny_FixedLambda(ISRGTrainer_Tiny):
    learn_lambda = False


class ISRGTrainer_Tiny_RawWeights(ISRGTrainer_Tiny):
    weight_average_decay = None


class ISRGTrainer_50epochs(ISRGTrainer):
    epochs = 50


class ISRGTrainer_Tiny_50epochs(ISRGTrainer_Tiny):
    epochs = 50


class ISRGTrainer_Tiny_150epochs(ISRGTrainer_Tiny):
    """The demo's model trained about four times as long (7,500 iterations, about 75 min on 2 cores)."""

    epochs = 150


class ISRGTrainer_Tiny_20epochs(ISRGTrainer_Tiny):
    """The tiny model on a shorter schedule (1,000 iterations, about 9 min per fold on 2 cores), so
    that 5 folds of two real datasets fit a CPU day (``scripts/benchmark_realdata.py``)."""

    epochs = 20


class _DebugSchedule:
    """A few iterations on a very small network: for tests of the whole nnU-Net pipeline."""

    model_preset = "tiny"
    crop_size = (32, 32, 32)
    model_overrides = {"depth": 2}
    max_correction_rounds = 1
    validation_clicks = 3
    epochs = 2
    iterations_per_epoch = 2
    val_iterations_per_epoch = 1
    warmup_epochs = 1
    checkpoint_every = 1
    weight_average_decay = 0.5    # so that 4 iterations move the average away from the initial weights


class ISRGTrainer_Debug(_DebugSchedule, ISRGTrainer):
    pass


class ISRGTrainer_Debug_Vanilla(_DebugSchedule, ISRGTrainer_Vanilla):
    pass
