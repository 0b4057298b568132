"""Experiment configs for `python -m experiments.run --config configs/FILE.py`."""
