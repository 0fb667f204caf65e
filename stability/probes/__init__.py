"""Stability probes: on-device statistics of gradients, parameters, activations, attention and
output logits, read to the host in one copy per read-out; and the growth exponent at init.

Each metric is declared once in `stability.metric_names` (vocabulary: `registry`); `compute`
binds the device metrics to their statistics (`stats`, over the parameter groups of `layout`,
found through a `layer_map`); `recorder` lays out and names the rows; `session` is the trainer's
glue; `docs` writes docs/metrics.md from the declarations."""
