"""The options of the hooks: tracking and run identity, plus every probe knob by its
`ProbesConfig` name, so a hook is configured with the words our trainer's config uses.

One flat keyword set (`StabilityMonitor(model, every=20, arm="qk_norm")`); an unknown or
mistyped option fails at construction with one line naming it and the allowed ones.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from model.config import ConfigError, suggest
from stability.config import ProbesConfig, apply_table


@dataclass
class HookOptions:
    """What a hook needs beyond the probe knobs (`probes`)."""

    tracking: bool = True  # False: probes and spikes only, nothing written to MLflow
    tracking_uri: str = ""  # "": $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    experiment: str = "stability"
    run_name: str = ""
    arm: str = ""  # tag `arm`: what `stability report` pairs runs by, with `seed`
    seed: int | None = None  # tag `seed`
    log_every: int = 10  # host read-out and MLflow write interval, in optimizer steps
    clip_grad_norm: float = 0.0  # the loop's clipping threshold, for grad/clip_coef (0: none)
    output_dir: str = ""  # dense Parquet parts and the outage spool ("": runs/<run name>)
    probes: ProbesConfig = field(default_factory=ProbesConfig)

    def validate(self) -> None:
        if self.log_every < 1:
            raise ConfigError(f"log_every: must be >= 1, got {self.log_every}")
        if self.clip_grad_norm < 0:
            raise ConfigError(f"clip_grad_norm: must be >= 0, got {self.clip_grad_norm}")
        if not self.experiment:
            raise ConfigError("experiment: must not be empty")
        self.probes.validate("probes")


OWN = tuple(f.name for f in dataclasses.fields(HookOptions) if f.name != "probes")
PROBE_KNOBS = tuple(f.name for f in dataclasses.fields(ProbesConfig))
ALLOWED = (*OWN, *PROBE_KNOBS)


def parse_options(options: dict[str, Any], **defaults: Any) -> HookOptions:
    """`options` (over `defaults`, a host's own choices) as checked `HookOptions`; raises
    `ConfigError` with one line naming a bad option."""
    merged = {**defaults, **options}
    for key in merged:
        if key not in ALLOWED:
            raise ConfigError(f"{key}: unknown option ({suggest(key, ALLOWED)})")
    out = HookOptions()
    apply_table(out, {k: v for k, v in merged.items() if k in OWN})
    apply_table(out.probes, {k: v for k, v in merged.items() if k in PROBE_KNOBS})
    out.validate()
    return out
