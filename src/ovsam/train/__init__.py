"""Training: SAM2CLIP distillation and CLIP2SAM training on one ``torchrun``-based engine."""
