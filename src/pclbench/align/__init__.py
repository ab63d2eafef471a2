"""Stage 2, landmark alignment (workflow/rules/align.smk): landmarks, crops, aligned shards."""
