"""The model: open_clip towers over grey radiographs, local weights, JSON configs, the tokenizer and
zero-shot scoring. No trainer, no Dagster: evaluation and inference import this, never `training`."""
