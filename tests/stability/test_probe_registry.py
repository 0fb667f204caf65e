"""The probe registry: declarations generate the row layouts and names, rows are checked by name and
shape, a new declaration reaches the rows, the read-out and the docs, and every logged metric is
declared."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model import build, model_preset
from stability import metric_names as M
from stability.config import OptimConfig, ProbesConfig
from stability.loss import fused_lm_loss
from stability.optim import AdamW, clip_grad_norm_, param_groups
from stability.probes.compute import COMPUTE, TABLE, bind
from stability.probes.docs import render
from stability.probes.recorder import ProbeSpec
from stability.probes.registry import Cadence, Dims, Metric, Registry, Shape
from stability.probes.session import ProbeSession

ROOT = Path(__file__).resolve().parents[2]
L, H = 4, 4
DIMS = Dims(L, H, tuple(range(L)))

# The rows as the trainer laid them out by hand before the registry (5c0190e), with the
# precursor signals declared since appended to the probe row's per-layer block: key, size.
HAND_WRITTEN = {
    Cadence.STEP: [*((k, 1) for k in M.STEP_SERIES), (M.LOGITS_LOG_Z_MEAN, 1),
                   (M.LOGITS_LOG_Z_MAX, 1), (M.GRAD_NORM_EMBED, 1), (M.GRAD_NORM_LM_HEAD, 1),
                   (M.GRAD_NORM, L)],
    Cadence.PROBE: [*((k, L) for k in (M.GRAD_RMS, M.GRAD_NORM_ATTN, M.GRAD_NORM_MLP,
                                       M.GRAD_NORM_NORMS, M.PARAM_NORM, M.UPDATE_RMS,
                                       M.OPTIM_EPS_REGIME, M.ACT_RMS, M.UPDATE_GRAD_COS,
                                       M.GRAD_V_RATIO_MAX, M.ACT_ATTN_OUT_RMS, M.ACT_MLP_OUT_RMS)),
                    *((k, 1) for k in (M.GRAD_RMS_EMBED, M.GRAD_RMS_LM_HEAD, M.PARAM_NORM_EMBED,
                                       M.LOGITS_MAX_ABS, M.LOGITS_MEAN))],
    Cadence.ATTN: [(k, L * H) for k in (M.ATTN_LOGIT_MAX, M.ATTN_ENTROPY_MEAN, M.ATTN_ENTROPY_MIN,
                                         M.ATTN_Q_NORM, M.ATTN_K_NORM)],
}


@pytest.mark.parametrize("cadence", list(HAND_WRITTEN))
def test_declarations_generate_the_hand_written_rows(cadence):
    spec = ProbeSpec.of(M.REGISTRY, cadence, DIMS)
    assert [(f.key, f.size) for f in spec.fields] == HAND_WRITTEN[cadence]
    assert [f.start for f in spec.fields] == [0, *(f.slice.stop for f in spec.fields[:-1])]
    assert spec.width == sum(size for _, size in HAND_WRITTEN[cadence])


def _distinct_values(spec: ProbeSpec) -> dict[Metric, torch.Tensor]:
    """Each field its own values: field k holds 1000 k + 0, 1, 2, ..."""
    return {f.metric: torch.arange(f.size, dtype=torch.float32).reshape(f.shape) + 1000 * k
            for k, f in enumerate(spec.fields)}


def _expected_names(spec: ProbeSpec, values: dict[Metric, torch.Tensor]) -> dict[str, float]:
    out = {}
    for m, v in values.items():
        if m.shape is Shape.SCALAR:
            out[m.key] = v.item()
        elif m.shape is Shape.PER_LAYER:
            out.update({M.layer_key(m.key, i): v[i].item() for i in spec.dims.layers})
        else:
            reduce = {"max": torch.max, "min": torch.min, "mean": torch.mean}[m.summary]
            out.update({M.layer_key(m.key, i): reduce(v[pos]).item()
                        for pos, i in enumerate(spec.dims.layers)})
    return out


@pytest.mark.parametrize("cadence", list(HAND_WRITTEN))
def test_values_are_placed_and_named_by_metric_not_by_order(cadence):
    spec = ProbeSpec.of(M.REGISTRY, cadence, Dims(L, H, (1, 3)))
    values = _distinct_values(spec)
    row = spec.flatten(values)
    assert torch.equal(spec.flatten(dict(reversed(values.items()))), row)
    assert spec.named(row.tolist()) == _expected_names(spec, values)


def test_swapped_declarations_cannot_mislabel_a_row():
    # Before the registry the session passed values in the spec's field order, by hand: two
    # per-layer fields swapped in one place and not the other were mislabelled silently.
    # Now the row follows the declarations and the values say which metric they are.
    probe = M.REGISTRY.at(Cadence.PROBE)
    i, j = probe.index(M.REGISTRY.get(M.GRAD_NORM_ATTN)), probe.index(M.REGISTRY.get(M.GRAD_NORM_MLP))
    probe[i], probe[j] = probe[j], probe[i]
    swapped = ProbeSpec(probe, DIMS)
    values = _distinct_values(ProbeSpec.of(M.REGISTRY, Cadence.PROBE, DIMS))
    row = swapped.flatten(values).tolist()
    assert swapped.named(row) == _expected_names(swapped, values)
    assert swapped.values(row, M.GRAD_NORM_ATTN) == values[M.REGISTRY.get(M.GRAD_NORM_ATTN)].tolist()


def test_a_row_is_checked_by_name_and_shape():
    spec = ProbeSpec.of(M.REGISTRY, Cadence.PROBE, DIMS)
    values = _distinct_values(spec)
    attn, mlp = M.REGISTRY.get(M.GRAD_NORM_ATTN), M.REGISTRY.get(M.GRAD_NORM_MLP)
    with pytest.raises(ValueError, match=r"grad/norm/attn \(per layer\): want shape \(4,\), got \(4, 4\)"):
        spec.flatten({**values, attn: torch.zeros(L, H)})
    with pytest.raises(ValueError, match=r"logits/mean \(scalar\): want shape \(\), got \(4,\)"):
        spec.flatten({**values, M.REGISTRY.get(M.LOGITS_MEAN): torch.zeros(L)})
    with pytest.raises(ValueError, match=r"missing \['grad/norm/mlp \(per layer\)'\]"):
        spec.flatten({m: v for m, v in values.items() if m != mlp})
    with pytest.raises(ValueError, match=r"not in this row \['train/loss \(scalar\)'\]"):
        spec.flatten({**values, M.REGISTRY.get(M.TRAIN_LOSS): torch.zeros(())})
    with pytest.raises(TypeError):
        spec.flatten(*values.values())  # the old positional call


def test_registry_rejects_what_it_cannot_name():
    reg = Registry(M.REGISTRY)
    with pytest.raises(ValueError, match="declared twice"):
        reg.declare(M.GRAD_RMS, Cadence.PROBE, Shape.PER_LAYER, what="again")
    with pytest.raises(ValueError, match="needs a summary"):
        reg.declare("attn/new", Cadence.ATTN, Shape.PER_HEAD, what="no summary")
    with pytest.raises(ValueError, match="needs a summary"):
        reg.declare("grad/new", Cadence.PROBE, Shape.PER_LAYER, what="a summary", summary="max")
    for bad in ("Grad/norm", "grad", "grad//norm", "grad/norm/layer_3"):
        with pytest.raises(ValueError, match="metric key"):
            reg.declare(bad, Cadence.STEP, what="bad key")
    with pytest.raises(KeyError, match=r"declared as \['per layer', 'scalar'\]"):
        reg.get(M.GRAD_NORM)
    with pytest.raises(KeyError, match="declared as"):
        bind({M.GRAD_NORM: lambda x: x.grad_norm})  # which grad/norm?
    with pytest.raises(ValueError, match="not a device row"):
        bind({M.TRAIN_LR: lambda x: x.grad_norm})


def test_every_device_metric_has_a_compute():
    device = {m for m in M.REGISTRY if m.cadence.on_device}
    assert set(COMPUTE) == device
    assert len(TABLE) == len(device)


def test_every_logged_metric_is_declared_and_the_other_way_round():
    golden = json.loads((ROOT / "tests" / "golden" / "golden_run.json").read_text())["metrics"]
    undeclared = [k for k in golden if M.REGISTRY.declared(k) is None]
    assert not undeclared
    logged = {M.REGISTRY.declared(k) for k in golden}
    not_in_golden = {m.key for m in M.REGISTRY if m not in logged}
    # wall clock (not pinned), CUDA only, windows longer than the 30-step golden run, and
    # rewinds (train.on_spike = "rewind" only)
    assert not_in_golden == {M.TRAIN_TOKENS_PER_S, M.TRAIN_MFU, M.SPIKE_SCORE_LOSS,
                             M.SPIKE_SCORE_GRAD_NORM, M.SPIKE_OLMO_CORE_RUNNING, M.TRAIN_REWINDS}
    assert all(M.REGISTRY.get(k, Shape.SCALAR).cadence is Cadence.STEP for k in M.STEP_SERIES)


def test_declared_cadences_are_when_the_golden_run_logs():
    # tests/golden: 30 steps, read-out every 5, probes every 5, attention every 10, eval every 15
    golden = json.loads((ROOT / "tests" / "golden" / "golden_run.json").read_text())["metrics"]
    probe_steps = list(range(0, 30, 5))
    expected = {Cadence.STEP: list(range(30)), Cadence.PROBE: probe_steps,
                Cadence.ATTN: list(range(0, 30, 10)), Cadence.READ_OUT: list(range(4, 30, 5)),
                Cadence.EVAL: [14, 29], Cadence.ONCE: [0]}
    for key, points in golden.items():
        m = M.REGISTRY.declared(key)
        steps = [s for s, _ in points]
        if m.cadence is Cadence.STEP and m.shape is not Shape.SCALAR:
            assert steps == probe_steps, key  # per-layer keys of the step row: at probe steps
        elif key.startswith("spike/"):  # judged once the windows fill
            assert set(steps) <= set(expected[m.cadence]) and steps, key
        else:
            assert steps == expected[m.cadence], key


def test_declarations_and_docs_import_no_torch():
    code = ("import sys, stability.metric_names, stability.probes.registry, stability.probes.docs; "
            "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


# ---------------------------------------------------------------- one step through a session
def _model():
    cfg = model_preset("olmo2-tiny")
    return build(cfg, generator=torch.Generator().manual_seed(0))


def _one_step(model, session: ProbeSession, step: int = 0):
    """One training step of `model` as the trainer drives the session; returns the read-out."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, model.cfg.vocab_size, (2, 16), generator=gen)
    session.arm(step)
    out, hidden = model.features(ids, return_hidden=True)
    parts = fused_lm_loss(out, model.lm_head.weight, ids.roll(-1, 1), 1e-4, stats=True)
    parts.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    grad_norm, clip_coef, norms = clip_grad_norm_(session.params, 1.0)
    opt = AdamW(param_groups(model, OptimConfig()), lr=1e-3, betas=(0.9, 0.95), eps=1e-8)
    row = session.step_row(parts, grad_norm, clip_coef, torch.zeros(()), norms)
    session.before_update(step, opt)
    opt.step()
    session.after_step(step, parts, hidden, opt, model, ids, None)
    return session.read_out(row[None], step), grads


def test_each_per_layer_value_is_logged_under_its_own_key():
    # Swapped compute entries (attn <-> mlp, param norm <-> update RMS) would fail here.
    model = _model()
    found, grads = _one_step(model, ProbeSession(model, ProbesConfig()))
    [(_, logged)] = [p for p in found.probes if M.layer_key(M.GRAD_RMS, 0) in p[1]]
    for i in range(model.cfg.n_layers):
        mine = {n: g for n, g in grads.items() if n.startswith(f"blocks.{i}.")}

        def norm(names, mine=mine):
            return math.sqrt(sum(mine[n].double().square().sum().item() for n in names))

        attn = [n for n in mine if ".attn." in n and "norm" not in n]
        mlp = [n for n in mine if ".mlp." in n]
        norms = [n for n in mine if n not in attn and n not in mlp]
        numel = sum(g.numel() for g in mine.values())
        for key, want in ((M.GRAD_NORM_ATTN, norm(attn)), (M.GRAD_NORM_MLP, norm(mlp)),
                          (M.GRAD_NORM_NORMS, norm(norms)), (M.GRAD_NORM, norm(mine)),
                          (M.GRAD_RMS, norm(mine) / math.sqrt(numel))):
            assert logged[M.layer_key(key, i)] == pytest.approx(want, rel=1e-5), (key, i)
        params = torch.cat([p.detach().flatten() for n, p in model.named_parameters()
                            if n.startswith(f"blocks.{i}.")])
        assert logged[M.layer_key(M.PARAM_NORM, i)] == pytest.approx(params.norm().item(), rel=1e-5)
        # one step of Adam: m_hat / sqrt(v_hat) = sign(g), so the update RMS is ~1
        assert logged[M.layer_key(M.UPDATE_RMS, i)] == pytest.approx(1.0, abs=0.02)


def test_a_new_declaration_reaches_docs_rows_and_the_read_out():
    reg = Registry(M.REGISTRY)
    key = reg.declare("grad/max_abs", Cadence.PROBE, Shape.PER_LAYER,
                      what="largest |gradient entry| of a block", source="a test")
    assert "| `grad/max_abs/layer_{i}` | per layer | largest \\|gradient entry\\| of a block | a test |" \
        in render(reg)
    assert "grad/max_abs" not in render(M.REGISTRY)
    dims = Dims(L, H, (0, 2))
    spec = ProbeSpec.of(reg, Cadence.PROBE, dims)
    assert spec.width == ProbeSpec.of(M.REGISTRY, Cadence.PROBE, dims).width + L
    assert spec.fields[-1].key == key

    model = _model()
    with pytest.raises(ValueError, match=r"no compute for grad/max_abs \(per layer, probe\)"):
        ProbeSession(model, ProbesConfig(), registry=reg)
    metric = reg.get(key)
    computes = {**COMPUTE, metric: lambda x: torch.stack(
        [torch.tensor(float(i)) for i in range(x.setup.layout.n_layers)])}
    session = ProbeSession(model, ProbesConfig(layers=[0, 2]), registry=reg, computes=computes)
    found, _ = _one_step(model, session)
    [(_, logged)] = [p for p in found.probes if M.layer_key(M.GRAD_RMS, 0) in p[1]]
    assert {k: v for k, v in logged.items() if k.startswith(key)} == {
        M.layer_key(key, 0): 0.0, M.layer_key(key, 2): 2.0}
    assert (0, key, [0.0, 1.0, 2.0, 3.0]) in found.dense


def test_computes_run_in_row_order():
    # Under data parallelism the optimizer sums and activation means are collectives: every rank
    # must reach them in the same order, whatever the process's hash seed.
    calls = []

    def recording(metric, fn):
        return lambda x: calls.append(metric) or fn(x)

    model = _model()
    session = ProbeSession(model, ProbesConfig(),
                           computes={m: recording(m, fn) for m, fn in COMPUTE.items()})
    _one_step(model, session)
    assert calls == [f.metric for s in (session.step_spec, session.probe_spec, session.attn_spec)
                     for f in s.fields]


def test_layout_names_follow_the_probed_layers():
    model = _model()
    session = ProbeSession(model, ProbesConfig(layers=[3, 1]))
    found, _ = _one_step(model, session)
    keys = {k for _, named in found.probes for k in named}
    per_layer = {re.sub(r"^.*/layer_", "", k) for k in keys if "/layer_" in k}
    assert per_layer == {"1", "3"}
    attn = {key: v for _, key, v in found.dense[-5:]}  # the attention row's series, as declared
    assert list(attn) == [m.key for m in M.REGISTRY.at(Cadence.ATTN)]
    assert all(len(v) == 2 and len(v[0]) == model.cfg.n_heads for v in attn.values())
    logit_max = attn[M.ATTN_LOGIT_MAX]
    summary = next(named for _, named in found.probes if M.layer_key(M.ATTN_LOGIT_MAX, 3) in named)
    assert summary[M.layer_key(M.ATTN_LOGIT_MAX, 3)] == max(logit_max[0])
    assert summary[M.layer_key(M.ATTN_LOGIT_MAX, 1)] == max(logit_max[1])
