"""The experiment's trainer (see ../box_heavy_training.py): imported from this folder by name, so that
nnU-Net's workers can unpickle it; nnU-Net finds it through ``ext/``."""
from nnunet_isrg.training.variants import ISRGTrainer_Tiny_20epochs


class ISRGTrainer_Tiny_20epochs_BoxHeavy(ISRGTrainer_Tiny_20epochs):
    """A 3D box as the first prompt in 60 % of iterations (0.7 boxes, 15 % of them 2D) instead of the
    trainers' 35 % (0.5 boxes, 30 % of them 2D)."""

    first_box_fraction = 0.7
    box_2d_fraction = 0.15
