"""Stability probes: on-device statistics of gradients, parameters, activations, attention and
output logits, read to the host in one copy per read-out; and the growth exponent at init."""
