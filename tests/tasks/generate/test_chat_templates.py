"""Chat templates render as transformers' apply_chat_template does: the shipped ones and a user's
tokenizer config, folder or Jinja file; BOS handling, stops, system-role detection, errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ultrafeedback.tasks.generate.chat_templates import ChatTemplateError, read_template

REPO = Path(__file__).resolve().parents[3]
SHIPPED = sorted((REPO / "deployments" / "chat_templates").glob("*.json"))
SYSTEM = {"role": "system", "content": "Be honest about what you do not know."}
USER = {"role": "user", "content": "Why is the sky blue?\nAnswer in {one} line."}


def transformers_render(config: dict[str, Any], messages: list[dict[str, str]]) -> str:
    """transformers' own apply_chat_template on a tokenizer built from the config (no vocabulary
    needed: the text is not tokenized)."""
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tokens = {key: config[key] for key in ("bos_token", "eos_token", "unk_token") if key in config}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")), **tokens
    )
    tokenizer.chat_template = config["chat_template"]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def test_every_model_family_of_the_paper_pool_ships_a_template():
    assert {path.name for path in SHIPPED} == {
        "alpaca.json",
        "falcon-instruct.json",
        "llama-2-chat.json",
        "mpt-chat.json",
        "oasst-pythia.json",
        "starchat-beta.json",
        "ultralm.json",
        "vicuna-v1.1.json",
        "wizardlm-7b.json",
    }


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_templates_render_as_transformers_does(path: Path):
    config = json.loads(path.read_text())
    template = read_template(path)
    for messages in ([USER], [SYSTEM, USER]) if template.has_system_role() else ([USER],):
        expected = transformers_render(config, messages)
        if config.get("add_bos_token"):  # the server's tokenizer adds BOS to a plain prompt itself
            expected = expected.removeprefix(config["bos_token"])
        assert template.render(messages) == expected
        assert USER["content"] in expected


@pytest.mark.parametrize(
    ("name", "system_role"),
    [
        ("llama-2-chat.json", True),
        ("vicuna-v1.1.json", True),
        ("ultralm.json", True),
        ("mpt-chat.json", True),
        ("starchat-beta.json", True),
        ("falcon-instruct.json", True),
        ("alpaca.json", True),
        ("wizardlm-7b.json", False),
        ("oasst-pythia.json", False),
    ],
)
def test_which_templates_have_a_system_role(name: str, system_role: bool):
    template = read_template(REPO / "deployments" / "chat_templates" / name)
    assert template.has_system_role() is system_role
    if not system_role:
        with pytest.raises(ChatTemplateError, match=f"{name}: .*system role"):
            template.render([SYSTEM, USER])


def test_llama_2_prompt_without_a_second_bos_and_with_its_stop():
    template = read_template(REPO / "deployments" / "chat_templates" / "llama-2-chat.json")
    assert template.render([SYSTEM, USER]) == (
        f"[INST] <<SYS>>\n{SYSTEM['content']}\n<</SYS>>\n\n{USER['content']} [/INST]"
    )
    assert template.stop == ("</s>",)


def test_stops_are_the_eos_token_and_the_configs_own():
    template = read_template(REPO / "deployments" / "chat_templates" / "mpt-chat.json")
    assert template.stop == ("<|endoftext|>", "<|im_end|>")


def write(path: Path, data: Any) -> Path:
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


def test_a_users_tokenizer_config_with_added_token_dicts_and_named_templates(tmp_path: Path):
    config = {
        "bos_token": {"content": "<|begin|>", "lstrip": False},
        "eos_token": "<|stop|>",
        "add_bos_token": False,
        "chat_template": [
            {"name": "tool_use", "template": "tools"},
            {
                "name": "default",
                "template": "{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}"
                "{{ eos_token }}{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}",
            },
        ],
    }
    template = read_template(write(tmp_path / "tokenizer_config.json", config))
    assert template.render([USER]) == f"<|begin|>[user]{USER['content']}<|stop|>[assistant]"  # BOS kept
    assert template.tokens["bos_token"] == "<|begin|>" and template.stop == ("<|stop|>",)


def test_a_model_folder_with_chat_template_jinja_beside_its_config(tmp_path: Path):
    write(tmp_path / "tokenizer_config.json", {"eos_token": "</s>", "chat_template": "ignored"})
    write(tmp_path / "chat_template.jinja", "{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}")
    template = read_template(tmp_path)
    assert template.render([USER]) == USER["content"] + "</s>"
    assert template.name == tmp_path.name


def test_a_bare_jinja_file_takes_the_special_tokens_the_spec_gives(tmp_path: Path):
    path = write(tmp_path / "t.jinja", "{{ bos_token }}{{ messages[-1].content }}{{ eos_token }}")
    template = read_template(path, {"bos_token": "<B>", "eos_token": "<E>"})
    assert template.render([USER]) == f"<B>{USER['content']}<E>" and template.stop == ("<E>",)
    assert read_template(path).render([USER]) == USER["content"]  # undefined tokens render empty


def test_the_digest_changes_with_the_template_and_its_tokens(tmp_path: Path):
    path = write(tmp_path / "t.jinja", "{{ messages[-1].content }}")
    first = read_template(path).digest
    assert read_template(path).digest == first
    assert read_template(path, {"eos_token": "<E>"}).digest != first
    write(path, "{{ messages[-1].content }} ")
    assert read_template(path).digest != first


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("t.jinja", "{% for m in messages %}", r"t\.jinja: line 1: Unexpected end of template"),
        ("tokenizer_config.json", "{not json", r"not a JSON tokenizer config"),
        ("tokenizer_config.json", json.dumps({"eos_token": "</s>"}), r"no chat_template in it"),
        ("tokenizer_config.json", json.dumps({"chat_template": "x", "stop": "</s>"}), r"stop must be a list"),
    ],
)
def test_unusable_files_name_the_file_and_the_problem(tmp_path: Path, name: str, content: str, problem: str):
    with pytest.raises(ChatTemplateError, match=problem):
        read_template(write(tmp_path / name, content))


def test_a_missing_file_or_empty_folder_is_an_error(tmp_path: Path):
    with pytest.raises(ChatTemplateError, match="nope.json: file not found"):
        read_template(tmp_path / "nope.json")
    with pytest.raises(ChatTemplateError, match="neither tokenizer_config.json nor chat_template.jinja"):
        read_template(tmp_path)


def test_the_sandbox_refuses_what_transformers_refuses(tmp_path: Path):
    path = write(tmp_path / "t.jinja", "{{ messages.__class__.__mro__ }}")
    with pytest.raises(ChatTemplateError):
        read_template(path).render([USER])


@pytest.mark.parametrize(
    ("name", "start", "end"),
    [
        (
            "llama-2-chat.json",
            "You are a helpful, respectful and honest assistant.",
            "please don't share false information.",
        ),
        ("vicuna-v1.1.json", "A chat between a curious user", "answers to the user's questions."),
        ("ultralm.json", "A one-turn chat between a curious user", "answers to the user's questions."),
        ("mpt-chat.json", "- You are a helpful assistant chatbot trained by MosaicML.", "and make jokes."),
        ("alpaca.json", "Below is an instruction that describes a task.", "appropriately completes the request."),
        ("starchat-beta.json", "", ""),
        ("falcon-instruct.json", "", ""),
    ],
)
def test_the_default_system_text_is_what_the_template_writes_without_a_system_message(name: str, start: str, end: str):
    text = read_template(REPO / "deployments" / "chat_templates" / name).default_system()
    assert text.startswith(start) and text.endswith(end)
    assert bool(text) == bool(start)


def test_a_template_without_a_system_role_has_no_default_system_text():
    with pytest.raises(ChatTemplateError, match="oasst-pythia.json: .*no system role"):
        read_template(REPO / "deployments" / "chat_templates" / "oasst-pythia.json").default_system()
