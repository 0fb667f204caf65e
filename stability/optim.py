"""AdamW with the stability knobs: parameter groups, independent weight decay, on-device skip-step.

Our own AdamW (torch's update rule, foreach kernels) so that a step can be skipped by a device
tensor factor (no host sync) and so probes can read the unscaled update and the second moments.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from stability.config import OptimConfig
from stability.distributed import local_tensor


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict[str, Any]]:
    """Split parameters into `decay` (matrices), `embed` (embeddings) and `norms` (norm scales,
    QK-norm included: every 1-D parameter, the model has no biases).

    Embeddings decay only with `embedding_weight_decay` (OLMo-0424 did, OLMo 2 does not); norm
    scales with `norm_weight_decay` (OLMo 2's released configs: `decay_norm_and_bias: true`, and
    OLMo-core's OLMo 2 recipe decays every parameter but the embeddings). With
    `independent_weight_decay` the group value is `wd / lr`, so torch's `lr_t * wd'` becomes
    `schedule(t) * wd` (Wortsman et al. 2023).
    """
    embed = model.get_submodule("embed").weight
    groups: dict[str, list[nn.Parameter]] = {"decay": [], "embed": [], "norms": []}
    for _, p in model.named_parameters():  # tied weights appear once
        if not p.requires_grad:
            continue
        if p is embed:
            groups["embed"].append(p)
        elif p.ndim >= 2:
            groups["decay"].append(p)
        else:
            groups["norms"].append(p)
    wd = cfg.weight_decay / cfg.lr if cfg.independent_weight_decay else cfg.weight_decay
    decay_of = {"decay": wd, "embed": wd if cfg.embedding_weight_decay else 0.0,
                "norms": wd if cfg.norm_weight_decay else 0.0}
    return [
        {"name": name, "params": params, "weight_decay": decay_of[name]}
        for name, params in groups.items()
        if params
    ]


class AdamW(torch.optim.Optimizer):
    """torch.optim.AdamW's rule through its fused kernel; `step(factor)` skips on device.

    `factor` is a 0-d tensor (1 = apply, 0 = skip): a skipped step leaves weights, moments and
    the step count untouched, decided on device (the kernel's `found_inf` input), no host sync.
    """

    def __init__(self, groups: list[dict[str, Any]], lr: float, betas: tuple[float, float],
                 eps: float) -> None:
        super().__init__(groups, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": 0.0})

    def _state_lists(self, group: dict[str, Any]) -> dict[tuple, tuple[list, ...]]:
        """Per (device, dtype): params, grads, first and second moments, step counts.

        Sharded (FSDP2 DTensor) parameters, grads and moments enter as their local shards: the
        update is elementwise, so each rank updates its own shard.
        """
        buckets: dict[tuple, tuple[list, ...]] = {}
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            lists = buckets.setdefault((p.device, p.dtype), ([], [], [], [], []))
            for lst, item in zip(lists, (p, p.grad, state["exp_avg"], state["exp_avg_sq"])):
                lst.append(local_tensor(item))
            lists[4].append(state["step"])
        return buckets

    @torch.no_grad()
    def step(self, factor: torch.Tensor | None = None) -> None:  # type: ignore[override]
        """One AdamW update of every group; `factor` (0-d tensor, 0 or 1) skips it on device."""
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for (device, _), (params, grads, avgs, sqs, steps) in self._state_lists(group).items():
                skipped = None if factor is None else (1.0 - factor).to(device, torch.float32)
                torch._foreach_add_(steps, 1.0)
                torch._fused_adamw_(params, grads, avgs, sqs, [], steps, lr=group["lr"],
                                    beta1=b1, beta2=b2, weight_decay=group["weight_decay"],
                                    eps=group["eps"], amsgrad=False, maximize=False,
                                    grad_scale=None, found_inf=skipped)
                if skipped is not None:
                    torch._foreach_sub_(steps, [skipped] * len(steps))


class SkipStep:
    """OLMo-core's `SkipStepOptimizer` decision on device, step for step.

    OLMo-core keeps the last `window + 1` CE losses and grad norms (the current one included) and
    skips unless `x - mean <= sigma * std` for both, over the previous values (torch.std_mean:
    sample std), once it holds `max(2, window // 2)` values counting the current one. A NaN or
    inf in the current value or in the window fails that test, so such steps are skipped too.
    Without clipping OLMo-core's train module never sets a grad norm: the loss alone decides
    (`grad_norm=None`). The host counts the steps, so the window is a contiguous slice and the
    reduction is the same `std_mean` over the same values in the same order: no host sync.
    Returns the step factor (1 = apply, 0 = skip).
    """

    def __init__(self, window: int, sigma: float, device: torch.device) -> None:
        self.window, self.sigma = window, sigma
        self.min_values = max(2, window // 2)
        # Oldest first; the newest value is at index -1 of each row. Rows: loss, grad norm.
        self.history = torch.zeros(2, window + 1, dtype=torch.float32, device=device)
        self.count = 0  # values seen (host side)

    @classmethod
    def from_config(cls, cfg: OptimConfig, device: torch.device) -> SkipStep:
        return cls(cfg.skip_step_window, cfg.skip_step_sigma, device)

    def __call__(self, loss: torch.Tensor, grad_norm: torch.Tensor | None) -> torch.Tensor:
        use_grad = grad_norm is not None
        current = torch.stack([loss.detach().float(),
                               (grad_norm if use_grad else loss).detach().float()])
        self.history.copy_(torch.cat([self.history[:, 1:], current[:, None]], dim=1))
        self.count += 1
        if self.count < self.min_values:
            return torch.ones((), device=self.history.device)
        n = min(self.count - 1, self.window)  # previous values in the window
        ok = self._within(self.history[0], n)
        if use_grad:
            ok = ok & self._within(self.history[1], n)
        return ok.float()

    def _within(self, row: torch.Tensor, n: int) -> torch.Tensor:
        std, mean = torch.std_mean(row[-1 - n:-1].contiguous())
        return (row[-1] - mean) <= self.sigma * std

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history.clone(), "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history.copy_(state["history"])
        self.count = int(state["count"])


@torch.no_grad()
def clip_grad_norm_(params: list[torch.Tensor], max_norm: float,
                    reduce_sq: Callable[[torch.Tensor], torch.Tensor] | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Global L2 clipping on device. Returns (pre-clip norm, clip coefficient in (0, 1], the
    pre-clip per-tensor norms in `params` order, for the probes). Every param needs a grad.

    Sharded grads: `reduce_sq` sums the stacked squared norms of the local shards [P] over ranks
    (one all-reduce, `stability.distributed.PackedSum`); norms and clipping are then global.
    """
    grads = [p.grad for p in params]
    if reduce_sq is None:
        norms = list(torch._foreach_norm(grads, 2.0))
    else:
        grads = [local_tensor(g) for g in grads]
        sq = torch.stack([n.float() for n in torch._foreach_norm(grads, 2.0)]).square()
        norms = list(reduce_sq(sq).sqrt().unbind())
    total = torch.linalg.vector_norm(torch.stack([n.float() for n in norms]), 2.0)
    if max_norm <= 0:
        return total, torch.ones_like(total), norms
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    torch._foreach_mul_(grads, coef.to(grads[0].dtype))
    return total, coef, norms
