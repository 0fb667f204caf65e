"""Growth exponent lambda at initialisation (OLMo 2 section 3.2; docs/reference.md section 4).

A batch of documents goes through a freshly initialised model. The residual stream after the
first block (h1) and after the last block (hL), embeddings excluded, and the gradients of the
loss with respect to them are reduced over documents and positions to vectors v (first) and
v' (last) of length d_model; then, separately for activations and gradients,

    lambda = (1 / n_layers) * log(||v'|| / ||v||).

Reductions (`reduce`), per channel over all B * T positions:

    mean   the literal mean of the signed vectors (default); signs can cancel, so ||v|| also
           reflects how aligned the stream is across tokens, not only its size.
    rms    root-mean-square, sqrt(mean(x^2)): the typical magnitude per channel.

The loss is the trainer's fused head + mean CE (+ `z_coef` z-loss) over kept labels, so the
gradients carry a 1/(kept tokens) factor; it cancels in lambda. Every position (ignored labels
included) enters the average: its stream still feeds later positions' losses.
"""

from __future__ import annotations

import dataclasses
import math

import pandas as pd
import torch

import model as model_lib
from stability.config import RunConfig
from stability.data import build_data
from stability.loss import fused_lm_loss
from stability.seeding import derive_seeds, init_generator

REDUCTIONS = ("mean", "rms")
COLUMNS = ["init", "d_model", "seed", "growth_act", "growth_grad", "act_norm_first",
           "act_norm_last", "grad_norm_first", "grad_norm_last"]
# The four streams, in the order `_stream_sums` returns them.
_STREAMS = ("act_first", "act_last", "grad_first", "grad_last")


def _stream_sums(
    model: model_lib.Transformer,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    z_coef: float,
    doc_ids: torch.Tensor | None,
    reduce: str,
) -> tuple[torch.Tensor, int]:
    """Per-channel sums over positions ([4, d], float64, order `_STREAMS`) and the position count.

    Sums x for `reduce="mean"`, x^2 for "rms". Gradients come from `torch.autograd.grad` w.r.t.
    the two hidden tensors only, so no parameter's `.grad` is touched; the mode is restored.
    """
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce: {reduce!r} is not one of ({', '.join(REDUCTIONS)})")
    was_training = model.training
    device = model.lm_head.weight.device
    model.eval()
    try:
        with torch.enable_grad():
            ids = input_ids.to(device)
            out, hidden = model.features(ids, None if doc_ids is None else doc_ids.to(device),
                                         return_hidden=True)
            first, last = hidden[0], hidden[-1]
            if not last.requires_grad:
                raise ValueError("growth_exponents: the model's parameters do not require grad")
            loss = fused_lm_loss(out, model.lm_head.weight, labels.to(device), z_coef).loss
            if first is last:  # one block: the first layer is the last
                (g_last,) = torch.autograd.grad(loss, [last])
                g_first = g_last
            else:
                g_first, g_last = torch.autograd.grad(loss, [first, last])
        streams = [first.detach(), last.detach(), g_first, g_last]
        d = first.shape[-1]
        rows = [s.reshape(-1, d).double() for s in streams]
        sums = torch.stack([r.sum(0) if reduce == "mean" else r.square().sum(0) for r in rows])
        return sums.cpu(), rows[0].shape[0]
    finally:
        model.train(was_training)


def _finish(sums: torch.Tensor, count: int, reduce: str, n_layers: int) -> dict[str, float]:
    """Exponents and norms of the reduced vectors from accumulated `_stream_sums`."""
    vec = sums / count
    if reduce == "rms":
        vec = vec.sqrt()
    norms = dict(zip(_STREAMS, vec.norm(dim=1).tolist()))

    def lam(first: float, last: float) -> float:
        if first == 0.0 or last == 0.0:
            return math.nan if first == last else math.copysign(math.inf, last - first)
        return math.log(last / first) / n_layers

    return {
        "act": lam(norms["act_first"], norms["act_last"]),
        "grad": lam(norms["grad_first"], norms["grad_last"]),
        **{f"{k.split('_')[0]}_norm_{k.split('_')[1]}": v for k, v in norms.items()},
    }


def growth_exponents(
    model: model_lib.Transformer,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    z_coef: float = 0.0,
    *,
    doc_ids: torch.Tensor | None = None,
    reduce: str = "mean",
) -> dict[str, float]:
    """Growth exponents of `model` on one batch: `{"act": lambda_act, "grad": lambda_grad}`.

    `input_ids`, `labels` [B, T] (labels -100 where ignored); `doc_ids` masks attention to the
    document as in training. `reduce`: "mean" (the signed mean over documents and positions,
    the literal reading, default) or "rms" (root-mean-square per channel), see the module
    docstring. Also returns ||v|| and ||v'|| as `act_norm_first`, `act_norm_last`,
    `grad_norm_first`, `grad_norm_last`. Parameter gradients and train/eval mode are untouched.
    """
    sums, count = _stream_sums(model, input_ids, labels, z_coef, doc_ids, reduce)
    return _finish(sums, count, reduce, len(model.blocks))


def width_config(base: model_lib.ModelConfig, width: int, init: str) -> model_lib.ModelConfig:
    """`base` at d_model `width` with the same head_dim, mlp_hidden by the 8/3 rule, `init`."""
    return dataclasses.replace(base, d_model=width, n_heads=max(1, width // base.head_dim),
                               n_kv_heads=None, mlp_hidden=None, init=init)


def growth_table(
    base: RunConfig,
    widths: list[int],
    inits: list[str],
    seeds: list[int] = [0],  # noqa: B006 (read only)
    batch_size: int = 8,
    batches: int = 1,
    *,
    reduce: str = "mean",
    z_coef: float = 0.0,
    device: torch.device | str = "cpu",
) -> pd.DataFrame:
    """lambda_act and lambda_grad at init for every (init, width, seed): the width plot untrained.

    Each model is `base.model` at that width (`width_config`) initialised from
    `init_generator(seed)`; all are evaluated on the same first `batches` validation batches of
    `base.data` (built once with the data seed of run seed 0). Sums are pooled over the batches
    before reducing. Columns: `COLUMNS`.
    """
    data = build_data(base.data, vocab_size=base.model.vocab_size, seq_len=base.train.seq_len,
                      seed=derive_seeds(0)["data"])
    val = data.val_batches(batch_size, batches)
    rows = []
    for init in inits:
        for width in widths:
            cfg = width_config(base.model, width, init)
            for seed in seeds:
                model = model_lib.build(cfg, generator=init_generator(seed)).to(device)
                total, count = None, 0
                for batch in val:
                    doc_ids = batch.doc_ids if base.data.doc_mask else None
                    sums, n = _stream_sums(model, batch.input_ids, batch.labels, z_coef, doc_ids,
                                           reduce)
                    total, count = (sums if total is None else total + sums), count + n
                res = _finish(total, count, reduce, cfg.n_layers)
                rows.append({"init": init, "d_model": width, "seed": seed, "growth_act": res["act"],
                             "growth_grad": res["grad"],
                             **{k: res[k] for k in COLUMNS[5:]}})
    return pd.DataFrame(rows, columns=COLUMNS)


def format_growth_table(df: pd.DataFrame, digits: int = 4) -> str:
    """Plain text: one row per d_model, a (lambda_act, lambda_grad) column pair per init.

    Several seeds are averaged (the header then says how many).
    """
    inits = list(dict.fromkeys(df["init"]))
    grouped = df.groupby(["d_model", "init"])[["growth_act", "growth_grad"]].mean()
    widths = sorted(df["d_model"].unique())
    header = ["d_model"] + [f"{i}:{k}" for i in inits for k in ("lambda_act", "lambda_grad")]
    lines = [[str(w)] + [
        f"{grouped.loc[(w, i), col]:.{digits}f}" if (w, i) in grouped.index else "-"
        for i in inits for col in ("growth_act", "growth_grad")
    ] for w in widths]
    sizes = [max(len(h), *(len(r[j]) for r in lines)) for j, h in enumerate(header)]
    fmt = lambda cells: "  ".join(c.rjust(s) for c, s in zip(cells, sizes))  # noqa: E731
    out = [fmt(header), fmt(["-" * s for s in sizes]), *(fmt(r) for r in lines)]
    n_seeds = df["seed"].nunique()
    if n_seeds > 1:
        out.insert(0, f"(mean over {n_seeds} seeds)")
    return "\n".join(out)
