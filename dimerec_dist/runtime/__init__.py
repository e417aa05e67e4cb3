"""The process and its files: process group, exit codes, logs, stores, output places. Nothing of the model."""
