"""nnunet-isrg: interactive lesion segmentation and structured reports on top of nnU-Net v2."""
__version__ = "0.1.0"
