"""Assembles the assets into the one Definitions, plus jobs, schedules and the CLI."""
