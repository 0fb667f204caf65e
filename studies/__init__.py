"""The bundled studies that reproduce the OLMo 2 report's stability section finding by finding
(`stability reproduce`): which grids to run, what each finding compares, and the findings table.

The layer above the grid runner (`ablations`) and the reports (`reports`), which stay apart: a
study runs its grid with the one and reads its results back through the other.
"""
