"""Evaluation with the paper's protocol (IoU_b / IoU_n / Acc from ground-truth prompts)."""
