"""Hand-written forward/backward pairs for the block's elementwise pieces: RMSNorm, RoPE, SwiGLU.

Autograd records each composite op and replays its backward one small kernel at a time; at CPU
shapes (a few hundred KiB per tensor) that dispatch and the fresh allocations, not arithmetic,
are most of the cost. Each function here does its maths in fp32 (fp64 inputs stay fp64, for
gradcheck), saves what its backward needs and writes its gradient in a handful of kernels.
`tests/model/test_model_fused.py` checks them with `gradcheck` and against the composite formulas.

Inside `torch.compile` (train.compile) each function is its composite formula instead: inductor
fuses that into one kernel itself and needs no hand-written backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _maths_dtype(x: torch.Tensor) -> torch.dtype:
    """fp32 for half-precision inputs, else the input's own (fp64 stays fp64, for gradcheck)."""
    return torch.promote_types(x.dtype, torch.float32)


_FUSED_RMS = getattr(torch.ops.aten, "_fused_rms_norm", None)  # private op, torch >= 2.8


def _rms_forward(x: torch.Tensor, w: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, rstd [..., 1]): torch's fused kernel where this build has it, else three ops."""
    if _FUSED_RMS is not None:
        return _FUSED_RMS(x, [x.shape[-1]], w, eps)
    rstd = torch.rsqrt(x.square().mean(-1, keepdim=True) + eps)
    return x * rstd * w, rstd


class _RMSNormCPU(torch.autograd.Function):
    """y = w * x * r, r = rsqrt(mean(x^2) + eps) over the last dim; fp32 maths, y in x's dtype.

    Backward, with xh = x * r and gh = gy * w:  gx = r * (gh - xh * mean(gh * xh)),
    gw = sum over rows of gy * xh.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float):  # type: ignore[override]
        dtype = _maths_dtype(x)
        xf, wf = x.to(dtype), weight.to(dtype)
        y, rstd = _rms_forward(xf, wf, eps)
        ctx.save_for_backward(xf, wf, rstd)
        ctx.weight_dtype = weight.dtype
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, gy: torch.Tensor):  # type: ignore[override]
        xf, wf, rstd = ctx.saved_tensors
        gy = gy.to(xf.dtype)
        d = xf.shape[-1]
        gx = gw = None
        if ctx.needs_input_grad[0]:
            # gx = r gh - (r^3 / d) (gh . x) x, gh = gy * w
            gh = gy * wf
            coef = torch.linalg.vecdot(gh, xf).unsqueeze(-1).mul_(rstd.pow(3)).div_(d)
            gx = gh.mul_(rstd).sub_(xf * coef)
        if ctx.needs_input_grad[1]:
            # gw = sum over rows of gy * x * r: one elementwise product, one matrix-vector product
            rows = (gy * xf).reshape(-1, d)
            gw = (rows.t() @ rstd.reshape(-1)).to(ctx.weight_dtype)
        return gx, gw, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """`weight * x * rsqrt(mean(x^2) + eps)` over the last dim in fp32, returned in x's dtype.

    On CPU through `_RMSNormCPU` (torch has a fused CPU forward but a composite backward);
    elsewhere torch's own `rms_norm` (fused both ways on CUDA).
    """
    if x.device.type == "cpu" and torch.is_grad_enabled() and not torch.compiler.is_compiling():
        return _RMSNormCPU.apply(x, weight, eps)
    dtype = _maths_dtype(x)
    return F.rms_norm(x.to(dtype), weight.shape, weight.to(dtype), eps).to(x.dtype)


class _Rotary(torch.autograd.Function):
    """RoPE, rotate-half convention, with half tables c, s [..., T, 1, hd/2]:

        y1 = x1 c - x2 s,   y2 = x2 c + x1 s
    and its transpose for the gradient:
        g1 = gy1 c + gy2 s,  g2 = gy2 c - gy1 s.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):  # type: ignore[override]
        ctx.save_for_backward(cos, sin)
        ctx.dtype = x.dtype
        return _rotate(x.to(_maths_dtype(x)), cos, sin, sign=1.0).to(x.dtype)

    @staticmethod
    def backward(ctx, gy: torch.Tensor):  # type: ignore[override]
        cos, sin = ctx.saved_tensors
        return _rotate(gy.to(_maths_dtype(gy)), cos, sin, sign=-1.0).to(ctx.dtype), None, None


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, sign: float) -> torch.Tensor:
    """Rotate each (x1[i], x2[i]) pair by +angle (sign 1) or -angle (sign -1)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    y1, y2 = out[..., :half], out[..., half:]
    torch.mul(x1, cos, out=y1)
    y1.addcmul_(x2, sin, value=-sign)
    torch.mul(x2, cos, out=y2)
    y2.addcmul_(x1, sin, value=sign)
    return out


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate `x` [..., T, H, hd] by half tables `cos`, `sin` [..., T, 1, hd/2] (fp32 maths)."""
    if torch.compiler.is_compiling():
        xf = x.to(_maths_dtype(x))
        x1, x2 = xf.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)
    return _Rotary.apply(x, cos, sin)


class _SwiGLU(torch.autograd.Function):
    """y = silu(g) * u for `gate_up` = [g | u] on the last dim.

    Backward: gu = gy * silu(g);  gg = gy * u * sig(g) * (1 + g (1 - sig(g))), written into the
    two halves of one gradient tensor (no concatenation).
    """

    @staticmethod
    def forward(ctx, gate_up: torch.Tensor):  # type: ignore[override]
        gate, up = gate_up.chunk(2, dim=-1)
        act = F.silu(gate)
        ctx.save_for_backward(gate_up, act)  # act is kept: recomputing silu costs an exp pass
        return act * up

    @staticmethod
    def backward(ctx, gy: torch.Tensor):  # type: ignore[override]
        gate_up, act = ctx.saved_tensors
        gate, up = gate_up.chunk(2, dim=-1)
        grad = torch.empty_like(gate_up)
        g_gate, g_up = grad.chunk(2, dim=-1)
        torch.mul(act, gy, out=g_up)
        torch.ops.aten.silu_backward.grad_input(gy * up, gate, grad_input=g_gate)
        return grad


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    """`silu(gate) * up` where `gate_up` holds gate then up on its last dim."""
    if torch.compiler.is_compiling():
        gate, up = gate_up.chunk(2, dim=-1)
        return F.silu(gate) * up
    return _SwiGLU.apply(gate_up)
