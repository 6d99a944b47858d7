"""ISRG experiment planner for nnU-Net (run through `isrg plan`)."""
