"""Aggregation of the scored completions with Dask (DESIGN §1 step 5)."""

from ultrafeedback.tasks.aggregate.aggregate import TOKENIZER, AggregateResult, aggregate, count_tokens

__all__ = ["TOKENIZER", "AggregateResult", "aggregate", "count_tokens"]
