"""The staged neuron-swap experiment behind `python -m experiments.run`."""
