"""ISRG trainers for ``nnUNetv2_train DATASET 3d_fullres FOLD -tr <name>`` (defined in nnunet_isrg.training)."""
from nnunet_isrg.training.variants import *  # noqa: F401,F403
from nnunet_isrg.training.isrg_trainer import ISRGTrainer  # noqa: F401
from nnunet_isrg.training.baseline_trainers import *  # noqa: F401,F403
