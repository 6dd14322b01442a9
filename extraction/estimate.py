"""What a run will ask, before it asks: requests, prompt and completion tokens, cost.

Prompt tokens are counted from characters at the rate the backend measured from the server's
usage when it has one, else at 4 characters per token (OpenAI's rule of thumb for English).
Completion tokens are the mean of this model's cached answers when the cache has some, else
max_tokens per report (an upper bound). The cost uses the mode's prices (batch prices for the
batch modes), None when none is configured.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from extraction.cache import AnswerCache
from extraction.interface import Backend, Usage

TOKENS_PER_CHAR = 0.25


@dataclass(frozen=True)
class Estimate:
    requests: int
    prompt_tokens: int
    completion_tokens: int
    completion_basis: str
    cost_usd: float | None

    def line(self, mode: str) -> str:
        cost = f"${self.cost_usd:,.2f}" if self.cost_usd is not None else "cost unknown (no prices set)"
        return (f"estimate before the {mode} run: {self.requests:,} requests, ~{self.prompt_tokens:,} prompt and "
                f"~{self.completion_tokens:,} completion tokens ({self.completion_basis}), {cost}")

    def as_metadata(self) -> dict[str, object]:
        return {f"estimate_{k}": v for k, v in asdict(self).items() if v is not None}


def estimate(backend: Backend, texts: list[str], cache: AnswerCache) -> Estimate | None:
    """The estimate for asking `texts` (the cache misses); None for a backend without a prompt (rules)."""
    prompt = getattr(backend, "prompt", None)
    if prompt is None:
        return None
    per_request = getattr(backend, "reports_per_request", 1) if getattr(backend, "mode", "online") == "online" else 1
    requests = math.ceil(len(texts) / per_request)
    chars = requests * (len(prompt.system) + len(prompt.user_template)) + sum(len(t) for t in texts)
    rate = getattr(backend, "tokens_per_char", None) or TOKENS_PER_CHAR
    mean = cache.completion_tokens_mean(backend)
    if mean is not None:
        completion, basis = round(mean * len(texts)), "mean of the cached answers"
    else:
        completion, basis = backend.max_tokens * len(texts), "max_tokens per report, an upper bound"  # type: ignore[attr-defined]
    prompt_tokens = math.ceil(chars * rate)
    return Estimate(requests, prompt_tokens, completion, basis, backend.cost_usd(Usage(prompt_tokens, completion)))
