"""Pairs and binarized preference sets (reference §6)."""

from ultrafeedback.tasks.pairs.pairs import (
    SCORE_COLUMNS,
    SPLITS,
    TIE_DECIMALS,
    binarize,
    build_pairs,
    n_test_rows,
    pairs_frame,
    prompt_id,
    score_key,
    split_binarized,
    split_test_ids,
)

__all__ = [
    "SCORE_COLUMNS",
    "SPLITS",
    "TIE_DECIMALS",
    "binarize",
    "build_pairs",
    "n_test_rows",
    "pairs_frame",
    "prompt_id",
    "score_key",
    "split_binarized",
    "split_test_ids",
]
