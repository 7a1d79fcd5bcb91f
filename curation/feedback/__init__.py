"""Human and AI feedback on candidate answers: candidate sets (model samples merged with the
completions the sources already have), annotation-tool round trips, rankings turned into
preference pairs, and how far a judge can be trusted.

The tables follow the shared data model (``.notes/feedback_model.md``): ``candidates`` (one row
per prompt), ``rankings`` (one row per prompt and judge, human or AI) and preference pairs in
``curation.schema.PREFERENCES``. The LLM judge itself lives in ``curation.judge``; nothing here
depends on it, only on the rankings table it writes.
"""
