"""nnU-Net's ``nnUNet_extTrainer`` entry for the experiment's trainer (defined beside, in ../)."""
from box_heavy_trainer import ISRGTrainer_Tiny_20epochs_BoxHeavy  # noqa: F401
