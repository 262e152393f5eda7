"""Losses, the trainer (checkpoint/resume including the data position) and evaluation."""
