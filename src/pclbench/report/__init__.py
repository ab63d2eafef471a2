"""Stage 5, comparison tables and figures (workflow/rules/report.smk)."""
