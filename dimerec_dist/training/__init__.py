"""The trainer, its step, what it builds, its checkpoints and its logs."""
