"""The spike-response study (ablations/grids/study_rewind.toml): train through corrupted batches
(`nothing`), leave out the updates OLMo-core's skip-step rule flags (`skip_step`), or rewind and
skip data (`rewind`), with a run on the uncorrupted data (`clean`) as the ceiling.

Not a finding of the OLMo 2 report, so not part of `stability reproduce`; the same findings
machinery (paired on seeds, bootstrap CI, paired t-test, Holm) compares each response with
training through. Beside the findings it prints what each response cost: rewinds, steps
trained twice, updates skipped and how many of those fell on a corrupted batch.

    stability grid run study_rewind
    python -m studies.rewind_study            # writes results/study_rewind/findings.{md,csv}
"""

from __future__ import annotations

import argparse
import io
import math
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from ablations.spec import load_spec
from reports import frames as F
from reports.load import load_grid
from reports.tables import atomic_write_text, render_markdown
from stability import metric_names as M
from stability.rewind import REWINDS_ARTIFACT
from studies import measures as X
from studies.catalog import DOWN, Finding, Study
from studies.findings import findings_markdown, study_findings

GRID = "study_rewind"
AFTER_FIRST_STRETCH = 200  # the first eval after the first corrupted stretch (150-157), before the second


def eval_loss_at(step: int) -> X.Measure:
    """The eval loss at the first evaluation at or after `step`."""
    def at(s: pd.Series) -> float:
        later = s[s.index >= step]
        return float(later.iloc[0]) if len(later) else math.nan
    return X.of_series(f"eval_loss_at_{step}", f"eval loss at step {step}", M.EVAL_LOSS, at)


LOSS_EXCURSION = X.of_series("loss_excursion", "largest train CE / median of the 100 steps before",
                             M.TRAIN_CE_LOSS, X.excursion)
EVAL_AFTER = eval_loss_at(AFTER_FIRST_STRETCH)

PALM = "PaLM: restarting ~100 steps back and skipping 200-500 batches got past the spikes"
MARIN = ("skip-step leaves the spike's updates out (what it is for); marin #1368 saw skipping "
         "large-grad-norm steps not shorten recovery")
STUDY = Study(
    GRID, "Responses to a data-caused loss spike",
    "Rewinding and skipping the data avoids the damage of corrupted batches; skipping the flagged "
    "updates alone helps less.",
    (Finding("rewind", X.FINAL_EVAL_LOSS, DOWN, PALM),
     Finding("rewind", EVAL_AFTER, DOWN, PALM),
     Finding("rewind", LOSS_EXCURSION, DOWN, "(ours) the re-run steps never see the bad batches"),
     Finding("skip_step", X.FINAL_EVAL_LOSS, DOWN, MARIN),
     Finding("skip_step", EVAL_AFTER, DOWN, MARIN),
     Finding("clean", X.FINAL_EVAL_LOSS, DOWN, "(ours) the ceiling: no corrupted batches")),
    ("loss_curves",))

COST_COLUMNS = ("arm", "runs", "final_eval_loss", "eval_loss_at_200", "rewinds", "steps_trained",
                "updates_skipped", "skipped_on_bad_batches")


def rewinds_of(client, run_id: str) -> pd.DataFrame:
    """A run's rewinds.csv (empty when it never rewound)."""
    if REWINDS_ARTIFACT not in {a.path for a in client.list_artifacts(run_id)}:
        return pd.DataFrame(columns=["detected_at", "to_step"])
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run_id, REWINDS_ARTIFACT, tmp)
        return pd.read_csv(io.StringIO(Path(path).read_text()))


def costs(grid: F.GridData, rewinds: dict[str, pd.DataFrame], bad_batches: set[int]) -> pd.DataFrame:
    """Per arm (means over seeds): what the response cost and what it got. `rewinds`: each
    run's rewinds.csv (`rewinds_of`; a run missing there never rewound)."""
    skipped = grid.metric(M.OPTIM_STEP_SKIPPED)
    skipped = skipped[skipped["value"] > 0]
    final = X.FINAL_EVAL_LOSS.values(grid).set_index(["arm", "seed"])["value"]
    after = EVAL_AFTER.values(grid).set_index(["arm", "seed"])["value"]
    rows = []
    for _, run in grid.runs.iterrows():
        rid = run[F.RUN_ID]
        rw = rewinds.get(rid, pd.DataFrame(columns=["detected_at", "to_step"]))
        steps = int(run[F.LAST_STEP]) + 1 if pd.notna(run[F.LAST_STEP]) else 0
        retrained = int((rw["detected_at"] + 1 - rw["to_step"]).sum()) if len(rw) else 0
        mine = skipped[skipped[F.RUN_ID] == rid]["step"].astype(int)
        # skip-step never rewinds, so its step is its batch index
        rows.append({"arm": run[F.ARM], "seed": run[F.SEED], "rewinds": len(rw),
                     "steps_trained": steps + retrained, "updates_skipped": len(mine),
                     "skipped_on_bad_batches": int(mine.isin(bad_batches).sum())})
    per = pd.DataFrame(rows)
    per["final_eval_loss"] = [final.get((a, s), np.nan) for a, s in zip(per["arm"], per["seed"])]
    per["eval_loss_at_200"] = [after.get((a, s), np.nan) for a, s in zip(per["arm"], per["seed"])]
    out = per.groupby("arm", sort=False).agg(
        runs=("seed", "size"), final_eval_loss=("final_eval_loss", "mean"),
        eval_loss_at_200=("eval_loss_at_200", "mean"), rewinds=("rewinds", "mean"),
        steps_trained=("steps_trained", "mean"), updates_skipped=("updates_skipped", "mean"),
        skipped_on_bad_batches=("skipped_on_bad_batches", "mean")).reset_index()
    order = {a: i for i, a in enumerate(grid.arms)}
    return out.sort_values("arm", key=lambda a: a.map(order)).reset_index(drop=True)[list(COST_COLUMNS)]


def cost_markdown(table: pd.DataFrame) -> str:
    header = ["arm", "runs", "final eval loss", "eval loss at 200", "rewinds", "steps trained",
              "updates skipped", "of those on bad batches"]
    rows = [[r.arm, str(r.runs), f"{r.final_eval_loss:.3f}", f"{r.eval_loss_at_200:.3f}", f"{r.rewinds:.1f}",
             f"{r.steps_trained:.0f}", f"{r.updates_skipped:.1f}", f"{r.skipped_on_bad_batches:.1f}"]
            for r in table.itertuples(index=False)]
    return render_markdown(header, rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tracking-uri", help="MLflow URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    p.add_argument("--out", default=f"results/{GRID}", help="where findings.{md,csv} go")
    p.add_argument("--bootstrap", type=int, default=10_000)
    args = p.parse_args(argv)

    import os

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow

    from stability.store import absolute_uri, resolve_uri

    uri = absolute_uri(resolve_uri(args.tracking_uri))
    spec = load_spec(GRID)
    bad = set(spec.base.get("data", {}).get("bad_batches", []))
    grid = load_grid(GRID, uri, dense=False, series=(M.EVAL_LOSS, M.TRAIN_CE_LOSS, M.OPTIM_STEP_SKIPPED))
    findings = study_findings(STUDY, grid, n_boot=args.bootstrap)
    client = mlflow.MlflowClient(uri)
    cost = costs(grid, {rid: rewinds_of(client, rid) for rid in grid.runs[F.RUN_ID]}, bad)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = "\n\n".join([f"# {STUDY.title}", STUDY.claim, findings_markdown(findings, {GRID: STUDY.title}),
                        "## What each response cost (means over seeds)", cost_markdown(cost)]) + "\n"
    atomic_write_text(out / "findings.md", text)
    atomic_write_text(out / "findings.csv", findings.to_csv(index=False))
    atomic_write_text(out / "costs.csv", cost.to_csv(index=False))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
