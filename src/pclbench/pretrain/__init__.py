"""Stage 3, self-supervised pretraining (workflow/rules/pretrain.smk): methods, losses, views, trainer."""
