"""Pure training logic for postforge (torch, transformers, trl, datasets; no dagster, no polars).

Modules import their heavy dependencies themselves, so ``training.tokenizer`` stays cheap to import
for data-side users such as length profiling.
"""
