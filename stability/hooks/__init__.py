"""Stability hooks for anyone's training loop: our probes, spike detection with attribution,
MLflow tracking and dense artifacts in a plain PyTorch loop (`StabilityMonitor`), the Hugging
Face Trainer (`stability.hooks.hf.StabilityCallback`) and Lightning
(`stability.hooks.lightning.StabilityCallback`). docs/hooks.md shows each.

Importing this package imports neither transformers nor lightning; their adapters do.
"""

from stability.hooks.monitor import StabilityMonitor
from stability.hooks.options import ALLOWED, HookOptions, parse_options

__all__ = ["ALLOWED", "HookOptions", "StabilityMonitor", "parse_options"]
