"""Folder for nnU-Net's ``nnUNet_extTrainer``: thin re-exports of the trainers defined in ``nnunet_isrg.training``.

nnU-Net imports these files under bare module names and drops them from ``sys.modules`` after
the lookup, so classes defined here could not be pickled; they are defined in the package.
"""
