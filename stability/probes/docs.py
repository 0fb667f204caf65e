"""`docs/metrics.md`, generated from the declarations in `stability.metric_names`, so the metrics
documentation cannot drift from what is logged (a test compares the committed file).

    python -m stability.probes.docs            # rewrite docs/metrics.md
    python -m stability.probes.docs --check    # exit 1 if it is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stability import metric_names as M
from stability.probes.registry import CADENCE_TEXT, Cadence, Metric, Registry, Shape

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"

HEADER = """\
# Metrics

Generated from the declarations in `stability/metric_names.py` by `python -m stability.probes.docs`;
do not edit by hand (`tests/stability/test_metric_docs.py` fails when this file is out of date).

Shapes and names: a **scalar** is logged to MLflow under its key. A **per layer** metric is logged
as `key/layer_{i}` for the probed layers (`probes.layers`, all by default) and kept for every
layer in the dense artifact (`dense/`, key `key`, one row per layer). A **per head** metric is
logged as `key/layer_{i}` reduced over the heads (max, min or mean, as listed) and kept per layer
and head in the dense artifact. Device rows stay on the device and reach the host in one copy per
read-out; their fields are laid out in the order below.
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _name(m: Metric) -> str:
    return f"`{m.key}`" if m.shape is Shape.SCALAR else f"`{M.layer_key(m.key, '{i}')}`"


def _shape(m: Metric) -> str:
    if m.shape is Shape.PER_HEAD:
        return f"per head ({m.summary} over heads in MLflow)"
    return m.shape.value


def render(registry: Registry = M.REGISTRY) -> str:
    """The markdown of every declared metric, one table per cadence."""
    parts = [HEADER]
    for cadence in Cadence:
        metrics = registry.at(cadence)
        if not metrics:
            continue
        parts.append(f"\n## {CADENCE_TEXT[cadence][0].upper()}{CADENCE_TEXT[cadence][1:]}\n\n"
                     "| key | shape | what | source |\n|---|---|---|---|\n")
        parts.extend(f"| {_name(m)} | {_shape(m)} | {_cell(m.what)} | {_cell(m.source)} |\n"
                     for m in metrics)
    return "".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if docs/metrics.md is out of date")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        current = DOC.read_text() if DOC.exists() else ""
        if current != text:
            print(f"{DOC} is out of date: run python -m stability.probes.docs", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    print(f"wrote {DOC}: {len(M.REGISTRY)} metrics")
    return 0


if __name__ == "__main__":
    sys.exit(main())
