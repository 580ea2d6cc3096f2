"""The pairs gate: strictly better chosen, two different completions, positive margin, enough pairs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ultrafeedback.expectations.checks import (
    Suite,
    between,
    columns_match,
    compound_unique,
    fields_of,
    gx_expectations,
    meta,
    not_null,
    row_count,
    unique,
)
from ultrafeedback.expectations.models import GateContext
from ultrafeedback.records import Pair

if TYPE_CHECKING:
    from great_expectations.expectations import Expectation


def build_pairs(ctx: GateContext) -> list[Expectation]:
    """Pairs: strictly better chosen, two different completions, positive margin, enough pairs."""
    gxe = gx_expectations()
    return [
        columns_match("Pair", fields_of(Pair)),
        not_null("pair_id"),
        unique("pair_id"),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="score_chosen",
            column_B="score_rejected",
            or_equal=False,
            ignore_row_if="neither",
            **meta("score_chosen > score_rejected", "rows do not prefer the higher score"),
        ),
        gxe.ExpectSelectColumnValuesToBeUniqueWithinRecord(
            column_list=["chosen_id", "rejected_id"],
            ignore_row_if="never",
            **meta("chosen_id != rejected_id", "rows pair a completion with itself"),
        ),
        compound_unique(["chosen_id", "rejected_id"], "chosen/rejected unique", "rows repeat a chosen/rejected pair"),
        not_null("margin"),
        between("margin", 0, None, "margin > 0", strict_min=True),
        row_count(ctx.gates.min_pairs, None, "enough pairs"),
    ]


SUITE = Suite("pairs", build_pairs)
