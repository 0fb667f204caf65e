"""Peak FLOP/s of known accelerators and model FLOP utilisation (MFU).

MFU = tokens/s x training FLOPs per token (`Transformer.flops_per_token`) / peak FLOP/s of the
devices doing the work. Peaks are the vendors' dense (no 2:4 sparsity) tensor-core numbers:

- bf16 autocast: the BF16 tensor-core peak.
- fp32: the TF32 tensor-core peak when fp32 matmuls may use TF32
  (`torch.backends.cuda.matmul.allow_tf32`, or a float32 matmul precision other than "highest"),
  else the plain (non-tensor-core) FP32 peak.

A device whose name matches no row has no peak, and no MFU is reported.
"""

from __future__ import annotations

import torch

# (name substring, lower case; first match wins) -> peak FLOP/s per precision.
PEAK_FLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("h100 pcie", {"bf16": 756e12, "tf32": 378e12, "fp32": 51e12}),
    ("h100 nvl", {"bf16": 835e12, "tf32": 418e12, "fp32": 60e12}),
    ("h100", {"bf16": 989e12, "tf32": 494e12, "fp32": 67e12}),  # SXM ("H100 80GB HBM3")
    ("h200", {"bf16": 989e12, "tf32": 494e12, "fp32": 67e12}),
    ("a100", {"bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12}),
)


def peak_flops(device_name: str, precision: str, tf32: bool = True) -> float | None:
    """Dense peak FLOP/s of `device_name` at `precision` ("bf16" or "fp32"); None if unknown."""
    name = device_name.lower()
    for key, peaks in PEAK_FLOPS:
        if key in name:
            if precision == "bf16":
                return peaks["bf16"]
            return peaks["tf32"] if tf32 else peaks["fp32"]
    return None


def tf32_matmuls() -> bool:
    """True when fp32 CUDA matmuls may run on TF32 tensor cores."""
    return bool(torch.backends.cuda.matmul.allow_tf32) or torch.get_float32_matmul_precision() != "highest"


def device_peak_flops(device: torch.device, precision: str) -> float | None:
    """Peak FLOP/s of one `device` at the resolved `precision`; None off CUDA or when unknown."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return peak_flops(torch.cuda.get_device_name(device), precision, tf32_matmuls())


def mfu(tokens_per_s: float, flops_per_token: float, peak: float, n_devices: int = 1) -> float:
    """Model FLOP utilisation: achieved training FLOP/s over the peak of `n_devices` devices."""
    return tokens_per_s * flops_per_token / (peak * n_devices)
