"""Distillation: KD losses, the training loop, and the teacher-output cache."""
