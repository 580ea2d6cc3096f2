"""Numbered, immutable Hugging Face dataset releases (DESIGN §1 step 8, §4)."""

from ultrafeedback.tasks.publish.card import render_card, scrub, scrub_text
from ultrafeedback.tasks.publish.features import binarized_features, completions_features, pairs_features
from ultrafeedback.tasks.publish.hub import publish_to_hub
from ultrafeedback.tasks.publish.publish import (
    PublishedRelease,
    ReleaseTables,
    ShardedTables,
    list_releases,
    publish_release,
)
from ultrafeedback.tasks.publish.tables import completion_records

__all__ = [
    "PublishedRelease",
    "ReleaseTables",
    "ShardedTables",
    "binarized_features",
    "completion_records",
    "completions_features",
    "list_releases",
    "pairs_features",
    "publish_release",
    "publish_to_hub",
    "render_card",
    "scrub",
    "scrub_text",
]
