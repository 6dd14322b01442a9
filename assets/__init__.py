"""One module per stage; each asset is thin and calls plain library functions."""

import warnings

from dagster import BetaWarning, PreviewWarning

# `prompts` is an observable source asset, beta in this Dagster; it is our choice and nothing a
# user can act on, so its warning is silenced by its exact text, not every BetaWarning.
warnings.filterwarnings("ignore", category=BetaWarning,
                        message=r"Function `observable_source_asset` is currently in beta")
# Dagster's own Pipes reader reads a preview property of itself on every torchrun launch.
warnings.filterwarnings("ignore", category=PreviewWarning,
                        message=r"Function `PipesMessageReader.expected_writer_count` is currently in preview")
