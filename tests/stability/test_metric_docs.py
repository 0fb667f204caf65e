"""docs/metrics.md is generated from the declarations: the committed file is the generated one."""

from __future__ import annotations

from stability import metric_names as M
from stability.probes.docs import DOC, main, render
from stability.probes.registry import Shape


def test_committed_metrics_doc_is_generated_from_the_registry():
    assert DOC.read_text() == render(), "run: python -m stability.probes.docs"
    assert main(["--check"]) == 0


def test_the_doc_lists_every_declaration_once():
    text = render()
    for m in M.REGISTRY:
        name = m.key if m.shape is Shape.SCALAR else M.layer_key(m.key, "{i}")
        assert text.count(f"| `{name}` |") == 1, name
