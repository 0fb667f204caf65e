"""Paired ablation grids: spec files in `ablations/grids/` and the grid runner."""
