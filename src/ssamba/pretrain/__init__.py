"""Masked spectrogram patch modeling: mask generation, the InfoNCE/MSE objectives and the pretraining model."""
