"""Pairs and binarized preference sets (reference §6)."""

from ultrafeedback.tasks.pairs.pairs import (
    H4_SPLITS,
    SCORE_COLUMNS,
    SPLITS,
    TIE_DECIMALS,
    assign_splits,
    binarize,
    build_pairs,
    gen_messages,
    n_test_rows,
    pairs_frame,
    prompt_id,
    score_key,
    split_binarized,
    split_test_ids,
)

__all__ = [
    "H4_SPLITS",
    "SCORE_COLUMNS",
    "SPLITS",
    "TIE_DECIMALS",
    "assign_splits",
    "binarize",
    "build_pairs",
    "gen_messages",
    "n_test_rows",
    "pairs_frame",
    "prompt_id",
    "score_key",
    "split_binarized",
    "split_test_ids",
]
