"""The features (schemas) of a release's three configs: completions in the openbmb/UltraFeedback
record schema, pairs, and binarized sets in the TRL / HuggingFaceH4 chat format."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ultrafeedback.records import Pair

if TYPE_CHECKING:
    from datasets import Features


def completions_features() -> Features:
    """The openbmb/UltraFeedback record schema (reference §5), plus ``judge_model``/``judge_kind``
    and ``prompt_template`` (which template built the prompt) per completion and an
    instruction-level ``id``. Field order follows the published data."""
    from datasets import Features, List, Value

    text = Value("string")
    plain = {"Rating": text, "Rationale": text}
    typed_help = {"Rating": text, "Rationale": text, "Rationale For Rating": text, "Type": List(text)}
    typed_truth = {"Type": List(text), "Rationale": text, "Rating": text, "Rationale For Rating": text}
    completion = {
        "model": text,
        "principle": text,
        "custom_system_prompt": text,
        "response": text,
        "annotations": {
            "helpfulness": typed_help,
            "honesty": plain,
            "instruction_following": plain,
            "truthfulness": typed_truth,
        },
        "critique": text,
        "overall_score": Value("float64"),
        "fine-grained_score": Value("float64"),
        "judge_model": text,
        "judge_kind": text,
        "prompt_template": text,
    }
    return Features(
        {
            "source": text,
            "instruction": text,
            "models": List(text),
            "completions": List(completion),
            "correct_answers": List(text),
            "incorrect_answers": List(text),
            "id": text,
        }
    )


def pairs_features() -> Features:
    """The Pair record as Features (strings and float64 scores)."""
    from datasets import Features, Value

    kinds = {"str": "string", "float": "float64"}
    return Features({name: Value(kinds[info.annotation.__name__]) for name, info in Pair.model_fields.items()})


def binarized_features() -> Features:
    """TRL / HuggingFaceH4 binarized format: chat message lists with ``content`` and ``role``."""
    from datasets import Features, List, Value

    text = Value("string")
    messages = List({"content": text, "role": text})
    return Features(
        {
            "prompt": text,
            "prompt_id": text,
            "chosen": messages,
            "rejected": messages,
            "messages": messages,
            "score_chosen": Value("float64"),
            "score_rejected": Value("float64"),
            "chosen_model": text,
            "rejected_model": text,
            "source": text,
            "instruction_id": text,
            "chosen_id": text,
            "rejected_id": text,
        }
    )
