"""Datasets for training and evaluation: COCO / LVIS instances, SA-1B-style folders, prompts."""
