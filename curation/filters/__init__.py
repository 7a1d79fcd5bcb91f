"""Curation filters: each a small unit with a frozen config that looks at a ``Batch`` and returns
``Findings`` (ledger rows: rule, verdict, reason, score; plus rewritten message contents).

Filters are vectorised over the whole batch with polars expressions; ``curation.curate`` runs
them in order, applies drops and rewrites, and writes the ledger.
"""
