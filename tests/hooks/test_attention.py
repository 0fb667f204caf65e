"""The attention probe through the HF adapters: q and k as OLMo 2, Llama, Qwen2, Qwen3 (per-head
q/k norm) and GPT-2 attend with them (after q/k norm and RoPE). The logged entropy equals the
entropy of the model's own eager attention probabilities (`output_attentions`), computed in
float64 from the same weights."""

from __future__ import annotations

import pytest
import torch

from stability import metric_names as M
from stability.hooks import StabilityMonitor
from tests.hooks.helpers import MODELS, history


@pytest.mark.parametrize("name", ["olmo2", "llama", "gpt2", "qwen2", "qwen3"])
def test_attention_entropy_matches_eager_probabilities(name, corpus, mlflow_uri, tmp_path) -> None:
    torch.manual_seed(0)
    model = MODELS[name](initializer_range=0.3)  # sharp attention: RoPE and q/k norm matter
    model.set_attn_implementation("eager")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = corpus.train_batch(0, 4).input_ids
    with StabilityMonitor(model, opt, tracking_uri=mlflow_uri, output_dir=str(tmp_path),
                          attn_every=1, attn_batch=2) as monitor:
        model(input_ids=batch, labels=batch).loss.backward()
        monitor.after_backward()
        opt.step()
        monitor.after_step()  # the attention row of step 0: after the optimizer step
        model.eval()
        with torch.no_grad():
            probs = model(input_ids=batch[:2], output_attentions=True).attentions
    hist = history(mlflow_uri, monitor.run_id)
    for i, p in enumerate(probs):
        p = p.double()
        entropy = -(p * torch.log(p.clamp_min(1e-300))).sum(-1)  # [B, H, T]; 0 log 0 = 0
        (step, logged), = hist[M.layer_key(M.ATTN_ENTROPY_MEAN, i)]
        assert step == 0 and logged == pytest.approx(float(entropy.mean()), rel=1e-4)
        (_, low), = hist[M.layer_key(M.ATTN_ENTROPY_MIN, i)]
        assert low == pytest.approx(float(entropy.amin(dim=(0, 2)).min()), abs=1e-4)
    assert M.ATTN_LOGIT_MAX not in monitor.skipped


def test_gpt2_max_logit_equals_a_float64_recompute(corpus, mlflow_uri, tmp_path) -> None:
    """GPT-2 has no RoPE: q and k are its `c_attn` split, recomputed here in float64 from each
    layer's input (captured by the test's own pre-hooks)."""
    torch.manual_seed(0)
    model = MODELS["gpt2"](initializer_range=0.3)
    batch = corpus.train_batch(0, 4).input_ids
    with StabilityMonitor(model, tracking_uri=mlflow_uri, output_dir=str(tmp_path),
                          attn_every=1, attn_batch=2) as monitor:
        model(input_ids=batch, labels=batch).loss.backward()
        monitor.after_backward()
        monitor.after_step()
        inputs: list[torch.Tensor] = []
        handles = [block.attn.register_forward_pre_hook(lambda _m, args: inputs.append(args[0]))
                   for block in model.transformer.h]
        model.eval()
        with torch.no_grad():
            model(input_ids=batch[:2])
        for h in handles:
            h.remove()
    hist = history(mlflow_uri, monitor.run_id)
    for i, (block, x) in enumerate(zip(model.transformer.h, inputs)):
        w, b = block.attn.c_attn.weight.double(), block.attn.c_attn.bias.double()
        q, k, _ = (x.double() @ w + b).split(block.attn.split_size, dim=-1)
        heads, t = block.attn.num_heads, x.shape[1]
        q, k = (z.view(2, t, heads, -1).transpose(1, 2) for z in (q, k))
        logits = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
        logits = logits.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf"))
        (_, logged), = hist[M.layer_key(M.ATTN_LOGIT_MAX, i)]
        assert logged == pytest.approx(float(logits.amax()), rel=1e-4)
