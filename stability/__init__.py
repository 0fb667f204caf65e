"""Training-stability diagnostics after OLMo 2: the trainer, data, probes, spikes, tracking, CLI."""

__version__ = "0.1.0"
