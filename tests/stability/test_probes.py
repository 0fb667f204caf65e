"""Probes against explicit computations, and the trainer's probe, spike and artifact output."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from model import build, model_preset
from stability import metric_names as M
from stability.config import OptimConfig, load_config
from stability.optim import AdamW, clip_grad_norm_, param_groups
from stability.probes.layout import param_layout
from stability.probes.stats import act_rms, attention_stats, grad_stats, param_update_stats
from stability.train import Trainer
from tests.model.model_reference import ref_mask, ref_qkv


def _model_with_grads(**overrides):
    cfg = model_preset("olmo2-tiny")
    for k, v in overrides.items():
        setattr(cfg, k, v)
    model = build(cfg, generator=torch.Generator().manual_seed(0))
    ids = torch.randint(0, cfg.vocab_size, (2, 16))
    model(ids).logsumexp(-1).mean().backward()
    return model, ids


def test_grad_stats_equal_explicit_sums():
    model, _ = _model_with_grads()
    layout = param_layout(model)
    _, _, norms = clip_grad_norm_(layout.params, 0.0)
    g = grad_stats(layout, norms)
    named = dict(model.named_parameters())
    for i in range(model.cfg.n_layers):
        mine = {n: p for n, p in named.items() if n.startswith(f"blocks.{i}.")}
        sq = sum(p.grad.double().square().sum() for p in mine.values()).item()
        numel = sum(p.numel() for p in mine.values())
        assert g["layer_norm"][i].item() == pytest.approx(math.sqrt(sq), rel=1e-5)
        assert g["layer_rms"][i].item() == pytest.approx(math.sqrt(sq / numel), rel=1e-5)
        attn = sum(p.grad.double().square().sum() for n, p in mine.items()
                   if ".attn." in n and "norm" not in n).item()
        mlp = sum(p.grad.double().square().sum() for n, p in mine.items() if ".mlp." in n).item()
        assert g["part_norm"][i, 0].item() == pytest.approx(math.sqrt(attn), rel=1e-5)
        assert g["part_norm"][i, 1].item() == pytest.approx(math.sqrt(mlp), rel=1e-5)
        assert g["part_norm"][i].square().sum().item() == pytest.approx(sq, rel=1e-5)
    assert g["embed_norm"].item() == pytest.approx(named["embed.weight"].grad.norm().item(), rel=1e-5)
    assert g["head_norm"].item() == pytest.approx(named["lm_head.weight"].grad.norm().item(), rel=1e-5)


@pytest.mark.parametrize(("eps", "regime"), [(1e-8, 0.0), (1e6, 1.0)])
def test_update_rms_and_eps_regime_after_one_step(eps, regime):
    # After one step m_hat = g and v_hat = g^2, so the unscaled update is g / (|g| + eps).
    model, _ = _model_with_grads()
    layout = param_layout(model)
    grads = {id(p): p.grad.detach().clone() for p in layout.params}
    opt = AdamW(param_groups(model, OptimConfig()), lr=1e-3, betas=(0.9, 0.95), eps=eps)
    opt.step()
    stats = param_update_stats(layout, opt)
    for i in range(model.cfg.n_layers):
        ps = [p for n, p in zip(layout.names, layout.params) if n.startswith(f"blocks.{i}.")]
        u = torch.cat([(grads[id(p)] / (grads[id(p)].abs() + eps)).flatten() for p in ps])
        assert stats["update_rms"][i].item() == pytest.approx(u.square().mean().sqrt().item(),
                                                              rel=1e-4)
        assert stats["eps_regime"][i].item() == pytest.approx(regime, abs=0.02)
        p_norm = torch.cat([p.detach().flatten() for p in ps]).norm()
        assert stats["param_norm"][i].item() == pytest.approx(p_norm.item(), rel=1e-5)


def test_act_rms_equals_block_outputs():
    model, ids = _model_with_grads()
    outs = []
    hooks = [b.register_forward_hook(lambda _m, _a, o: outs.append(o)) for b in model.blocks]
    _, hidden = model.features(ids, return_hidden=True)
    for h in hooks:
        h.remove()
    expected = [o.detach().double().pow(2).mean().sqrt().item() for o in outs]
    assert act_rms(hidden).tolist() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("qk_norm", ["full", "none"])
def test_attention_stats_equal_explicit_logits(qk_norm):
    model, ids = _model_with_grads(qk_norm=qk_norm, clip_qkv=None if qk_norm == "full" else 0.5)
    doc_ids = torch.tensor([[0] * 6 + [1] * 10, [0] * 16])
    inputs = []
    hooks = [b.attn.register_forward_pre_hook(lambda _m, a: inputs.append(a[0]))
             for b in model.blocks]
    with torch.no_grad():
        model.features(ids, doc_ids)
    for h in hooks:
        h.remove()
    stats = attention_stats(model, ids, doc_ids)
    cfg = model.cfg
    mask = ref_mask(2, 16, doc_ids)
    for layer, (block, x) in enumerate(zip(model.blocks, inputs)):
        q, k, _ = ref_qkv(x, block.attn, cfg)
        for j in range(cfg.n_heads):
            scores = q[:, :, j] @ k[:, :, j].transpose(1, 2) / math.sqrt(q.shape[-1])
            assert stats["logit_max"][layer, j].item() == pytest.approx(
                scores[mask].max().item(), rel=1e-4, abs=1e-5)
            p = torch.softmax(scores.masked_fill(~mask, float("-inf")), -1)
            ent = -(p * torch.log(p.clamp(min=1e-300))).sum(-1)
            assert stats["entropy_mean"][layer, j].item() == pytest.approx(ent.mean().item(),
                                                                           rel=1e-4)
            assert stats["entropy_min"][layer, j].item() == pytest.approx(ent.min().item(),
                                                                          abs=1e-4)
            assert stats["q_norm"][layer, j].item() == pytest.approx(
                q[:, :, j].norm(dim=-1).mean().item(), rel=1e-4)


def test_trainer_logs_probes_and_spikes(tmp_path, monkeypatch):
    cfg = load_config("olmo2-tiny", overrides=[
        f'tracking.uri="sqlite:///{tmp_path}/mlflow.db"', f'train.checkpoint_dir="{tmp_path}/ck"',
        "data.max_bytes=300000", "train.steps=90", "train.log_every=10", "probes.every=10",
        "probes.attn_every=30", "train.batch_size=4", "train.seq_len=32"])
    trainer = Trainer(cfg, progress=False)
    real_clip = clip_grad_norm_

    def spike_layer_2_at_80(params, max_norm, reduce_sq=None):  # a gradient spike led by layer 2
        if trainer.step == 80:
            for p in trainer.model.blocks[2].parameters():
                p.grad.mul_(1e4)
        return real_clip(params, max_norm, reduce_sq)

    monkeypatch.setattr("stability.trainer.clip_grad_norm_", spike_layer_2_at_80)
    result = trainer.run()
    client = MlflowClient(cfg.tracking.uri)
    run = client.get_run(result.run_id)
    metrics = run.data.metrics
    for key in (M.layer_key(M.GRAD_NORM, 3), M.layer_key(M.UPDATE_RMS, 0),
                M.layer_key(M.OPTIM_EPS_REGIME, 1), M.layer_key(M.ACT_RMS, 3),
                M.layer_key(M.ATTN_LOGIT_MAX, 0), M.layer_key(M.ATTN_ENTROPY_MIN, 2),
                M.LOGITS_MAX_ABS, M.LOGITS_LOG_Z_MEAN, M.GRAD_NORM_EMBED, M.SPIKE_ONLINE_GRAD_NORM,
                M.INIT_GROWTH_ACT, M.INIT_GROWTH_GRAD,
                M.SPIKE_COUNT):
        assert key in metrics and math.isfinite(metrics[key]), key
    steps = [m.step for m in client.get_metric_history(result.run_id, M.layer_key(M.PARAM_NORM, 0))]
    assert steps == list(range(0, 90, 10))
    attn_steps = [m.step for m in client.get_metric_history(
        result.run_id, M.layer_key(M.ATTN_LOGIT_MAX, 1))]
    assert attn_steps == [0, 30, 60]
    csv = client.download_artifacts(result.run_id, M.SPIKES_ARTIFACT, str(tmp_path))
    events = pd.read_csv(csv)
    spike = events[(events.step == 80) & events.series.str.startswith(M.GRAD_NORM)]
    assert len(spike) == 1 and spike.leading_layer.iloc[0] == 2
    assert metrics[M.SPIKE_COUNT] >= 1

    from stability.dense import read_dense

    dense = read_dense(tmp_path / "ck" / "dense")
    heads = dense[(dense.key == M.ATTN_LOGIT_MAX) & (dense.step == 30)]
    assert sorted(heads.layer.unique()) == [0, 1, 2, 3] and sorted(heads["head"].unique()) == [0, 1, 2, 3]
    assert heads[heads.layer == 1].value.max() == pytest.approx(
        metrics_at(client, result.run_id, M.layer_key(M.ATTN_LOGIT_MAX, 1), 30), rel=1e-6)
    grads = dense[dense.key == M.GRAD_NORM]
    assert sorted(grads.step.unique()) == list(range(90))  # every step, every layer
    uploaded = [a.path for a in client.list_artifacts(result.run_id, "dense")]
    assert uploaded and all(p.endswith(".parquet") for p in uploaded)


def metrics_at(client, run_id: str, key: str, step: int) -> float:
    return next(m.value for m in client.get_metric_history(run_id, key) if m.step == step)


def test_probe_init_cli(capsys, tmp_path):
    from stability.cli import main

    csv = tmp_path / "growth.csv"
    rc = main(["probe-init", "--preset", "olmo2-tiny", "--widths", "64,128", "--inits",
               "normal,mitchell", "--set", "data.max_bytes=200000", "--batches", "1",
               "--csv", str(csv)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "normal:lambda_act" in out and "mitchell:lambda_grad" in out
    table = pd.read_csv(csv)
    assert sorted(table.d_model.unique()) == [64, 128] and table.growth_act.notna().all()
    assert main(["probe-init", "--preset", "olmo2-tiny", "--widths", "48"]) == 2
    assert main(["probe-init", "--preset", "olmo2-tiny", "--inits", "xavier"]) == 2
    assert "--widths: every width must be a multiple" in capsys.readouterr().err
    assert main(["tracking", "replay", str(tmp_path / "nope.jsonl")]) == 2


def test_probe_layer_subset(tmp_path):
    from stability.dense import read_dense

    cfg = load_config("olmo2-tiny", overrides=[
        f'tracking.uri="sqlite:///{tmp_path}/mlflow.db"', f'train.checkpoint_dir="{tmp_path}/ck"',
        "data.max_bytes=300000", "train.steps=6", "train.log_every=3", "probes.every=3",
        "probes.attn_every=3", "probes.layers=[1, 3]", "train.batch_size=2", "train.seq_len=32"])
    result = Trainer(cfg, progress=False).run()
    metrics = MlflowClient(cfg.tracking.uri).get_run(result.run_id).data.metrics
    for key in (M.ATTN_LOGIT_MAX, M.UPDATE_RMS, M.GRAD_NORM):
        assert M.layer_key(key, 1) in metrics and M.layer_key(key, 3) in metrics
        assert M.layer_key(key, 0) not in metrics and M.layer_key(key, 2) not in metrics
    dense = read_dense(tmp_path / "ck" / "dense")
    assert set(dense[dense.key == M.ATTN_LOGIT_MAX].layer) == {1, 3}
    assert set(dense[dense.key == M.GRAD_NORM].layer) == {0, 1, 2, 3}
    with pytest.raises(Exception, match="probes.layers: \\[7\\] has an index outside 0..3"):
        load_config("olmo2-tiny", overrides=["probes.layers=[7]"])


def test_spike_rules_follow_the_config():
    from stability.spike_monitor import rules_from

    cfg = load_config("olmo2-tiny", overrides=["probes.spike_window=200", "probes.spike_sigma=5",
                                               "probes.online_window=32", "probes.online_sigma=4"])
    olmo2, online = rules_from(cfg.probes)
    assert (olmo2.window, olmo2.sigma, olmo2.min_history, olmo2.one_sided) == (200, 5.0, 200, False)
    assert (online.window, online.sigma, online.min_history, online.one_sided) == (32, 4.0, 16, True)
    with pytest.raises(Exception, match="probes.online_window: must be >= 4"):
        load_config("olmo2-tiny", overrides=["probes.online_window=2"])
