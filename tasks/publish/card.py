"""The dataset card (README.md) of a release, and the scrubbing that keeps secrets out of it.

The card is what a user reads first on the Hub or in the release folder, so it states plainly what
the data are: the spec and its hash, the counts, the Table 1 statistics row (with the tokenizer
named), the per-model leaderboard, the gate results and the judge. When any rating or critique
comes from the heuristic judge, a notice at the top says so: such ratings are a rule set's, not a
model's judgement, and a reader must not mistake them for UltraFeedback-grade feedback.

The YAML front matter carries ``configs`` (so ``datasets.load_dataset(folder, name=...)`` finds
each config's files) and ``dataset_info`` (features and split sizes, for the Hub viewer).

Rendering is a pure function of its inputs; the only run-specific values it shows (version,
content hash) are passed in, so two renders of the same data are identical.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

REDACTED = "***"

_SECRET_WORDS = frozenset(
    {
        "key",
        "keys",
        "apikey",
        "token",
        "secret",
        "secrets",
        "password",
        "passwd",
        "pwd",
        "credential",
        "credentials",
        "auth",
        "authorization",
        "bearer",
        "cookie",
        "session",
        "signature",
    }
)
"""A mapping key containing one of these words (split on ``_``, ``-``, ``.``, spaces and camelCase)
has its value redacted: ``api_key``, ``api_key_env``, ``hf_token``, ``aws_secret_access_key``,
``Authorization``. Plural ``tokens`` is not a secret word, so ``max_tokens`` and
``tokens_per_minute`` stay readable, and neither is ``tokenizer``."""

_SECRET_VALUES = re.compile(
    r"(?:sk-(?:proj-)?[A-Za-z0-9_\-]{12,}"  # OpenAI-style keys
    r"|hf_[A-Za-z0-9]{16,}"  # Hugging Face tokens
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}"  # AWS access key ids
    r"|gh[pousr]_[A-Za-z0-9]{20,}"  # GitHub tokens
    r"|xox[abpr]-[A-Za-z0-9\-]{10,}"  # Slack tokens
    r"|(?i:bearer)\s+[A-Za-z0-9._\-~+/]{8,}=*)"
)
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)[^/\s@:]+:[^/\s@]+@")


def _words(key: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", key)
    return [w for w in re.split(r"[\s_\-.]+", spaced.lower()) if w]


def is_secret_key(key: str) -> bool:
    """Whether a mapping key names a secret (see ``_SECRET_WORDS``)."""
    return any(word in _SECRET_WORDS for word in _words(str(key)))


def scrub_text(text: str) -> str:
    """Redact secret-looking values in free text: API keys, bearer tokens, ``user:pass@`` in URLs."""
    text = _URL_USERINFO.sub(lambda m: f"{m.group('scheme')}{REDACTED}@", text)
    return _SECRET_VALUES.sub(REDACTED, text)


def scrub(obj: Any) -> Any:
    """A copy of ``obj`` with secret-named keys redacted and secret-looking strings masked.

    Applied to everything the flow hands to the card and the manifest: the card is published, and a
    spec dump may carry endpoint keys or S3 credentials (``execution.storage_options``).
    """
    if isinstance(obj, Mapping):
        return {
            str(k): (REDACTED if is_secret_key(str(k)) and v not in (None, "") else scrub(v)) for k, v in obj.items()
        }
    if isinstance(obj, list | tuple):
        return [scrub(v) for v in obj]
    if isinstance(obj, str):
        return scrub_text(obj)
    return obj


# --------------------------------------------------------------------------- markdown helpers


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        text = f"{value:.4f}".rstrip("0").rstrip(".") if value == value else ""
    elif isinstance(value, int) and not isinstance(value, bool):
        text = f"{value:,}"
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table (no tabulate dependency)."""
    if not rows:
        return "_(none)_"
    columns = list(columns or rows[0].keys())
    lines = [
        "| " + " | ".join(columns) + " |",
        "| " + " | ".join("---" for _ in columns) + " |",
    ]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def _size_category(n: int) -> str:
    for limit, label in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
        (10_000_000, "1M<n<10M"),
    ):
        if n < limit:
            return label
    return "n>10M"


# --------------------------------------------------------------------------- the card


def front_matter(
    configs: Sequence[Mapping[str, Any]],
    dataset_info: Sequence[Mapping[str, Any]] | None,
    *,
    pretty_name: str,
    license: str,
    n_rows: int,
    tags: Sequence[str] = (),
) -> str:
    """The YAML header: license and tags, ``configs`` (data_files per split) and ``dataset_info``."""
    data: dict[str, Any] = {
        "pretty_name": pretty_name,
        "license": license,
        "language": ["en"],
        "task_categories": ["text-generation"],
        "tags": ["ultrafeedback", "preference", "dpo", "rlhf", "synthetic", *tags],
        "size_categories": [_size_category(n_rows)],
        "configs": [dict(c) for c in configs],
    }
    if dataset_info:
        data["dataset_info"] = [dict(i) for i in dataset_info]
    return "---\n" + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=1000) + "---\n"


def heuristic_notice(heuristic: int, total: int, judge_models: Sequence[str]) -> str:
    """The warning shown at the top of the card when a heuristic judge rated any completion."""
    names = ", ".join(f"`{m}`" for m in judge_models) or "a heuristic rule set"
    share = f"{heuristic:,} of {total:,} completions" if total else f"{heuristic:,} completions"
    return (
        "> [!WARNING]\n"
        "> **Heuristic ratings, not a model's judgement.** The aspect ratings, rationales, critiques "
        f"and overall scores of {share} in this release come from a heuristic rule set ({names}), "
        "not from a language-model judge. They exercise the pipeline; they are not preference "
        "feedback in the UltraFeedback sense. Every completion records this in its `judge_kind` "
        "field (`heuristic` or `model`); filter on it before training on this data.\n"
    )


def render_card(
    *,
    spec_name: str,
    version: int,
    content_hash: str,
    configs: Sequence[Mapping[str, Any]],
    dataset_info: Sequence[Mapping[str, Any]] | None,
    counts: Mapping[str, Mapping[str, int]],
    judges: Sequence[Mapping[str, Any]],
    aggregate: Mapping[str, Any] | None,
    card_info: Mapping[str, Any],
    uri_hint: str = "RELEASE_FOLDER",
    plots: Sequence[tuple[str, str]] = (),
    changes: Mapping[str, Any] | None = None,
) -> str:
    """Render README.md. ``card_info`` must already be scrubbed (``scrub``); the result is scrubbed
    once more as a last guard, because the card is public. ``plots``: (path relative to the
    release folder, title) of the PNG files beside the card. ``changes``: the changelog from the
    parent release (``tasks.publish.changelog``; None: not computed)."""
    stats = dict((aggregate or {}).get("stats") or {})
    total = sum(int(j.get("completions", 0)) for j in judges)
    heuristic = sum(int(j.get("completions", 0)) for j in judges if j.get("judge_kind") == "heuristic")
    heuristic_models = sorted({str(j["judge_model"]) for j in judges if j.get("judge_kind") == "heuristic"})
    spec_hash = card_info.get("spec_hash") or "unknown"
    pretty = str(card_info.get("pretty_name") or spec_name)
    n_rows = max([sum(split.values()) for split in counts.values()] or [0])

    out: list[str] = [
        front_matter(
            configs,
            dataset_info,
            pretty_name=pretty,
            license=str(card_info.get("license") or "other"),
            n_rows=n_rows,
            tags=[str(t) for t in card_info.get("tags", [])],
        ),
        f"# {pretty}\n",
    ]
    if heuristic:
        out.append(heuristic_notice(heuristic, total, heuristic_models))
    description = card_info.get("description")
    out.append(
        (f"{description}\n\n" if description else "")
        + f"An UltraFeedback-style preference dataset built from the spec `{spec_name}` "
        f"(spec hash `{spec_hash}`). This is release **v{version}** (content hash "
        f"`{content_hash[:16]}`); releases are immutable, and `manifest.json` beside this card lists "
        "every file with its size and checksum, the gate results and the parent release.\n"
    )

    out.append("## Configs\n")
    config_rows = [
        {"config": name, "split": split, "rows": n if n else "0 (empty: no file, not declared)"}
        for name, splits in counts.items()
        for split, n in splits.items()
    ]
    out.append(markdown_table(config_rows) + "\n")
    out.append(
        "- `completions`: one row per instruction in the `openbmb/UltraFeedback` schema (source, "
        "instruction, models, completions with annotations, critique, overall_score and "
        'fine-grained_score; ratings are strings, honesty may be "N/A"), plus per completion '
        "`judge_model`, `judge_kind` and `prompt_template` (the chat template or prompt format that built "
        "its prompt: `template:<file>@<hash>`, `server`, `<format>@<version>`), and an instruction-level `id` "
        "(the content key that pairs "
        "and binarized rows refer to as `instruction_id`). An aspect that was not rated has null "
        "fields.\n"
        f"- `pairs`: every non-tied pair of completions of an instruction, ranked by the "
        f"`{card_info.get('pairs_score', stats.get('pair_score', 'fine_grained'))}` score; `margin` is the "
        "absolute score difference.\n"
        f"- `binarized`: one chosen/rejected pair per instruction by the "
        f"`{card_info.get('binarize_rule', 'h4')}` rule, in TRL's conversational format (`prompt`, "
        "`chosen`, `rejected`, `messages`), in HuggingFaceH4/ultrafeedback_binarized's six splits: "
        "`train_prefs` / `test_prefs` (preference modelling, DPO), `train_sft` / `test_sft` (the rows "
        "of `train_prefs` and of one half of `test_prefs`; `messages` is the chosen conversation) and "
        "`train_gen` / `test_gen` (the sft rows with the final assistant message removed from "
        "`messages`: prompts to generate from). A prompt keeps the split a release first put it in: "
        "a test row never moves to train in a later release.\n" + _binarize_notes(card_info)
    )
    if "://" in uri_hint and not uri_hint.startswith("file://"):
        # `datasets` reads a remote folder only through the parquet builder with data_files
        loading = (
            "prefs = load_dataset(\n"
            f'    "parquet", data_files={{"train_prefs": "{uri_hint}/binarized/train_prefs-*.parquet"}},\n'
            '    storage_options=STORAGE_OPTIONS)  # e.g. {"endpoint_url": ...}\n'
            f'completions = load_dataset("parquet", data_files="{uri_hint}/completions/train-*.parquet",\n'
            "                           storage_options=STORAGE_OPTIONS)\n"
        )
    else:
        loading = (
            f'prefs = load_dataset("{uri_hint}", name="binarized", split="train_prefs")\n'
            f'completions = load_dataset("{uri_hint}", name="completions", split="train")\n'
        )
    out.append(
        "```python\nfrom datasets import load_dataset\n\n"
        + loading
        + f'# a copy on the Hub is tagged per release: load_dataset(REPO_ID, name=..., revision="v{version}")\n'
        "```\n"
    )

    if stats:
        out.append("## Statistics (the paper's Table 1 row)\n")
        table1 = {
            "#prompts": stats.get("prompts"),
            "#completions": stats.get("completions"),
            "#critiques": stats.get("critiques"),
            "#ratings": stats.get("ratings"),
            "#feedback items": stats.get("feedback_items"),
            "#pairs": stats.get("pairs"),
            "avg prompt tokens": stats.get("avg_prompt_tokens"),
            "avg response tokens": stats.get("avg_response_tokens"),
            "avg critique tokens": stats.get("avg_critique_tokens"),
        }
        out.append(markdown_table([table1]) + "\n")
        out.append(
            f"Token lengths use the `{stats.get('tokenizer', 'unknown')}` tokenizer (runs of word "
            "characters or of punctuation, Unicode-aware), not the paper's (unstated) one, so they "
            "compare across releases, not with the paper's 185.1 / 305.3 / 143.1. #ratings counts "
            "aspect ratings; #feedback items adds the critiques. #pairs counts non-tied pairs by the "
            f"`{stats.get('pair_score', 'fine_grained')}` score (fine-grained: "
            f"{_cell(stats.get('pairs_fine_grained'))}, overall: {_cell(stats.get('pairs_overall'))}).\n"
        )

    if changes is not None:
        out.append(changes_section(changes))

    if plots:  # PNG files beside the card (``tasks.publish.plots``)
        out.append("## Plots\n")
        out.append("\n\n".join(f"![{title}]({path})" for path, title in plots) + "\n")

    tables = aggregate or {}
    if tables.get("leaderboard"):
        out.append("## Per-model leaderboard\n")
        out.append(markdown_table(tables["leaderboard"]) + "\n")
    if tables.get("by_source"):
        out.append("## Per source\n")
        out.append(markdown_table(tables["by_source"]) + "\n")
    if tables.get("rating_distribution"):
        out.append("## Rating distributions\n")
        out.append(markdown_table(tables["rating_distribution"]) + "\n")
    if tables.get("overall_histogram"):
        out.append("## overall_score histogram (floor of the score)\n")
        out.append(markdown_table(tables["overall_histogram"]) + "\n")

    out.append("## Judge\n")
    judge = card_info.get("judge")
    if judge:
        out.append("Configured judge:\n\n```json\n" + json.dumps(judge, indent=2, sort_keys=True) + "\n```\n")
    out.append(
        "Who rated the completions in this release:\n\n"
        + markdown_table(list(judges), ["judge_model", "judge_kind", "completions"])
        + "\n"
    )

    gates = card_info.get("gates")
    out.append("## Quality gates\n")
    if gates:
        gate_rows = gates if isinstance(gates, list) else [{"gate": k, **_as_row(v)} for k, v in gates.items()]
        out.append(markdown_table(gate_rows) + "\n")
    else:
        out.append("_No gate results were recorded for this release._\n")

    spec = card_info.get("spec")
    if spec:
        out.append("## Spec\n")
        out.append(
            "Secrets are never stored in a spec (endpoints name an environment variable); any key "
            "that looks like one is redacted here anyway.\n\n```yaml\n"
            + yaml.safe_dump(spec, sort_keys=False, allow_unicode=True)
            + "```\n"
        )
    return scrub_text("\n".join(out))


def _binarize_notes(card_info: Mapping[str, Any]) -> str:
    """What the card says about the binarized set's completion order and decontamination."""
    notes = []
    if card_info.get("completion_order") == "model":
        notes.append(
            "  A record's completions (and `models`) are listed by model id, as the released "
            "openbmb/UltraFeedback rows are; the first best-scored of them is `chosen`.\n"
        )
    sources = card_info.get("decontaminate_sources") or []
    if sources:
        names = ", ".join(f"`{name}`" for name in sources)
        notes.append(
            f"  Decontaminated: instructions of other sources that equal a question of {names} (exact, "
            "after normalisation) are left out of `binarized` (they stay in `completions` and `pairs`, as "
            "in the original data); `binarized/contaminated.json` in the store lists them.\n"
        )
    return "".join(notes)


def changes_section(changes: Mapping[str, Any]) -> str:
    """The card's changelog: rows added, removed and changed per config and split, with reasons."""
    from ultrafeedback.tasks.publish.changelog import changes_table

    notes = "".join(f"- {note}\n" for note in changes.get("notes") or [])
    parent = changes.get("parent")
    if parent is None:
        return "## Changes\n\nThe first release of this dataset: every row is new.\n" + (f"\n{notes}" if notes else "")
    text = (
        f"## Changes since v{parent}\n\nRows are matched by key (`completions`: `id`; `pairs`: `pair_id`; "
        "`binarized`: `prompt_id`) and compared value by value. Reasons: `new_instruction`; for an "
        "instruction in both releases `new_model` (a model joined or left its completions), "
        "`regenerated` (a response changed), `re_judged` (ratings, critique or scores changed) or "
        "`other`; for one that left, why ingest left it out (`quota_reduced`, `contaminated`, "
        "`duplicate_of`, `near_duplicate_of`, `missing_from_source`, `not_scored`, ...); "
        "`rules_changed` for pair or binarized rows of an unchanged instruction.\n\n"
    )
    text += markdown_table(changes_table(changes.get("configs") or {})) + "\n"
    if notes:
        text += "\n" + notes
    return text


def _as_row(value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return {str(k): (json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else v) for k, v in value.items()}
    return {"result": value}
