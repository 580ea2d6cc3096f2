"""A pool entry's prompt recipe: its identity in the request key, where the principle goes, what
is sent, and the spec errors for unusable templates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ultrafeedback.keys import content_key
from ultrafeedback.records import Instruction
from ultrafeedback.spec import SpecError, validate_dict
from ultrafeedback.tasks.assign.assign import assign
from ultrafeedback.tasks.generate.generate import to_llm_request
from ultrafeedback.tasks.generate.prompt_builder import PRINCIPLE_SEPARATOR, builder_for, builders
from ultrafeedback.tasks.generate.prompt_formats import FORMATS

REPO = Path(__file__).resolve().parents[3]
TEMPLATES = REPO / "deployments" / "chat_templates"
PRINCIPLE, INSTRUCTION = "Be honest.", "Why is the sky blue?"


def make_spec(tmp_path: Path, *entries: dict[str, Any]) -> Any:
    models = [{"id": f"m{i}", "backend": "openai", "endpoint": "e", **entry} for i, entry in enumerate(entries)]
    return validate_dict(
        {
            "name": "p",
            "sources": [{"name": "s", "loader": "jsonl", "path": "x"}],
            "endpoints": {"e": {"base_url": "http://127.0.0.1:9/v1"}},
            "models": models,
            "completions_per_instruction": 1,
        },
        base_dir=str(tmp_path),
    )


def build(spec: Any, model: str = "m0", principle: str = PRINCIPLE) -> Any:
    return builders(spec)[model].build(INSTRUCTION, principle)


def test_raw_formats_and_chat_keep_the_identity_requests_had_before_templates(tmp_path: Path):
    spec = make_spec(tmp_path, {"prompt_format": "llama-2"}, {})
    recipes = builders(spec)
    assert recipes["m0"].identity == f"llama-2@{FORMATS['llama-2'].version}"
    assert recipes["m1"].identity == f"chat@{FORMATS['chat'].version}"
    assert build(spec, "m1").messages == [
        {"role": "system", "content": PRINCIPLE},
        {"role": "user", "content": INSTRUCTION},
    ]


def test_a_template_with_a_system_role_gets_the_principle_as_system_message(tmp_path: Path):
    spec = make_spec(tmp_path, {"chat_template": str(TEMPLATES / "llama-2-chat.json")})
    recipe = builders(spec)["m0"]
    assert (recipe.kind, recipe.placement) == ("template", "system")
    assert recipe.identity.startswith("template:llama-2-chat.json@")
    built = recipe.build(INSTRUCTION, PRINCIPLE)
    assert built.prompt == f"[INST] <<SYS>>\n{PRINCIPLE}\n<</SYS>>\n\n{INSTRUCTION} [/INST]"
    assert built.messages is None and built.stop == ["</s>"]


def test_a_template_without_system_role_gets_the_principle_before_the_instruction(tmp_path: Path):
    spec = make_spec(tmp_path, {"chat_template": str(TEMPLATES / "oasst-pythia.json")})
    assert builders(spec)["m0"].placement == "instruction"
    assert build(spec).prompt == f"<|prompter|>{PRINCIPLE}{PRINCIPLE_SEPARATOR}{INSTRUCTION}<|endoftext|><|assistant|>"


def test_placement_none_drops_the_principle_and_changes_the_identity(tmp_path: Path):
    path = str(TEMPLATES / "wizardlm-7b.json")
    spec = make_spec(tmp_path, {"chat_template": path}, {"chat_template": path, "principle_placement": "none"})
    recipes = builders(spec)
    assert recipes["m0"].identity != recipes["m1"].identity
    built = recipes["m1"].build(INSTRUCTION, PRINCIPLE)
    assert built.prompt == f"{INSTRUCTION}\n\n### Response:" and not built.uses_system_prompt


def test_the_server_template_sends_chat_messages(tmp_path: Path):
    spec = make_spec(
        tmp_path, {"chat_template": "server"}, {"chat_template": "server", "principle_placement": "instruction"}
    )
    recipes = builders(spec)
    assert recipes["m0"].identity == "server" and recipes["m1"].identity == "server+principle=instruction"
    assert build(spec, "m1").messages == [{"role": "user", "content": f"{PRINCIPLE}{PRINCIPLE_SEPARATOR}{INSTRUCTION}"}]


def test_a_relative_template_path_resolves_against_the_spec_file(tmp_path: Path):
    (tmp_path / "t.jinja").write_text("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}")
    spec = make_spec(tmp_path, {"chat_template": "t.jinja"})
    assert build(spec).prompt == f"<system>{PRINCIPLE}<user>{INSTRUCTION}"


def test_changing_a_template_changes_that_models_request_ids_only(tmp_path: Path):
    path = tmp_path / "t.jinja"
    path.write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    spec = make_spec(tmp_path, {"chat_template": "t.jinja"}, {"prompt_format": "llama-2"})
    spec = spec.model_copy(update={"completions_per_instruction": 2})
    instruction = Instruction(id="i", source="s", instruction=INSTRUCTION, origin="x:1")
    before = {r.model: r for r in assign([instruction], spec)}
    path.write_text("{% for m in messages %}{{ m.content }}\n{% endfor %}")
    after = {r.model: r for r in assign([instruction], spec)}
    assert before["m0"].request_id != after["m0"].request_id
    assert before["m1"].request_id == after["m1"].request_id
    assert after["m0"].prompt_template.startswith("template:t.jinja@") and after["m0"].prompt_format == "template"
    assert after["m1"].prompt_template == f"llama-2@{FORMATS['llama-2'].version}"


def test_the_request_is_sent_as_a_raw_prompt_with_the_templates_stops(tmp_path: Path):
    spec = make_spec(tmp_path, {"chat_template": str(TEMPLATES / "mpt-chat.json"), "sampling": {"stop": ["###"]}})
    instruction = Instruction(id="i", source="s", instruction=INSTRUCTION, origin="x:1")
    (request,) = assign([instruction], spec)
    call = to_llm_request(request, instruction, "served", builders(spec)["m0"])
    assert call.messages is None and call.prompt.endswith("<|im_start|>assistant\n")
    assert call.sampling["stop"] == ["###", "<|endoftext|>", "<|im_end|>"]
    assert to_llm_request(request, instruction, "served").prompt == call.prompt  # the process's recipe


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{% if %}", r"models\[0\] \(m0\)\.chat_template: .*t\.jinja: line 1: "),
        ("{{ raise_exception('no') }}", r"models\[0\] \(m0\)\.chat_template: t\.jinja: no"),
    ],
)
def test_an_unusable_template_is_a_spec_error_naming_the_model(tmp_path: Path, content: str, problem: str):
    (tmp_path / "t.jinja").write_text(content)
    spec = make_spec(tmp_path, {"chat_template": "t.jinja"})
    with pytest.raises(SpecError, match=problem):
        builder_for(spec, spec.models[0])


def test_a_missing_template_file_is_a_spec_error(tmp_path: Path):
    spec = make_spec(tmp_path, {"chat_template": "missing/tokenizer_config.json"})
    with pytest.raises(
        SpecError, match=r"models\[0\] \(m0\)\.chat_template: .*missing/tokenizer_config.json: file not"
    ):
        builders(spec)


def test_contradicting_prompt_settings_are_refused_when_the_spec_is_read(tmp_path: Path):
    with pytest.raises(SpecError) as err:
        make_spec(
            tmp_path,
            {"chat_template": "server", "prompt_format": "llama-2"},
            {"prompt_format": "llama-2", "principle_placement": "none"},
            {"special_tokens": {"bos_token": "<s>"}},
        )
    assert [line.split(":")[0] for line in str(err.value).splitlines()] == [
        "models[0] (m0).chat_template, models[0] (m0).prompt_format=llama-2",
        "models[1] (m1).principle_placement=none, models[1] (m1).prompt_format=llama-2",
        "models[2] (m2).special_tokens, models[2] (m2).chat_template",
    ]


def test_json_of_the_shipped_configs_is_what_transformers_reads():
    for path in TEMPLATES.glob("*.json"):
        config = json.loads(path.read_text())
        assert isinstance(config["chat_template"], str) and config.get("eos_token"), path.name


def test_a_request_its_template_cannot_render_is_a_recorded_failure_not_a_call(tmp_path: Path, monkeypatch):
    from tests.tasks.generate.test_generate import FakeBackend
    from ultrafeedback.infra.checkpoint import failure_log
    from ultrafeedback.infra.store import Store
    from ultrafeedback.tasks.generate.generate import STAGE, generate_shard

    (tmp_path / "t.jinja").write_text(
        "{% for m in messages %}{% if 'forbidden' in m.content %}{{ raise_exception('not this one') }}{% endif %}"
        "{{ m.content }}{% endfor %}"
    )
    spec = make_spec(tmp_path, {"chat_template": "t.jinja"})
    instructions = {
        key: Instruction(id=key, source="s", instruction=text, origin="x:1")
        for key, text in (("ok", INSTRUCTION), ("bad", "a forbidden question"))
    }
    requests = assign(list(instructions.values()), spec)
    backend = FakeBackend()
    monkeypatch.setattr("ultrafeedback.infra.llm.factory.model_backend", lambda spec, entry: backend)
    store = Store(str(tmp_path / "store"), "p")
    report = generate_shard(spec, store, 0, requests, instructions)
    bad = next(r.request_id for r in requests if r.instruction_id == "bad")
    assert backend.sent == [next(r.request_id for r in requests if r.instruction_id == "ok")]
    assert (report.issued, report.succeeded, dict(report.failed)) == (1, 1, {"prompt_template": 1})
    (failure,) = failure_log(store, STAGE).rows()
    assert (failure["key"], failure["reason"], failure["error"]) == (bad, "prompt_template", "t.jinja: not this one")


# ---- where the original put the principle (reference §2, "Exact layouts"), with the paper spec's settings

LLAMA_2_DEFAULT = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe. "
    "Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal content. "
    "Please ensure that your responses are socially unbiased and positive in nature.\n\nIf a question does not make "
    "any sense, or is not factually coherent, explain why instead of answering something not correct. If you don't "
    "know the answer to a question, please don't share false information."
)
VICUNA_DEFAULT = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions."
)
ULTRALM_FIRST = (
    "User: A one-turn chat between a curious user and an artificial intelligence assistant. The assistant gives "
    "helpful, very detailed, and polite answers to the user's questions.</s>"
)
ALPACA_DEFAULT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (  # the default safety system prompt kept, the principle glued to the start of the user turn
            {"chat_template": "llama-2-chat.json", "principle_placement": "instruction", "principle_joiner": ""},
            f"[INST] <<SYS>>\n{LLAMA_2_DEFAULT}\n<</SYS>>\n\n{PRINCIPLE}{INSTRUCTION} [/INST]",
        ),
        (  # the template's default system text, a space, the principle
            {"chat_template": "vicuna-v1.1.json", "principle_placement": "default_system"},
            f"{VICUNA_DEFAULT} {PRINCIPLE} USER: {INSTRUCTION} ASSISTANT:",
        ),
        (  # a second `User:` turn on the fixed first line's string, then the lines joined by newlines
            {
                "chat_template": "ultralm.json",
                "principle_placement": "default_system",
                "principle_joiner": "</s>User: ",
            },
            f"{ULTRALM_FIRST}User: {PRINCIPLE}</s>\nUser: {INSTRUCTION}</s>\nAssistant: ",
        ),
        (  # no default system text: a space and the principle glued before `User:`
            {"chat_template": "falcon-instruct.json", "principle_placement": "default_system"},
            f" {PRINCIPLE}User: {INSTRUCTION}\n\nAssistant:",
        ),
        (
            {"chat_template": "alpaca.json", "principle_placement": "default_system"},
            f"{ALPACA_DEFAULT} {PRINCIPLE}\n\n### Instruction:\n{INSTRUCTION}\n\n### Response:\n",
        ),
        (
            {"chat_template": "starchat-beta.json", "principle_placement": "system"},
            f"<|system|>\n{PRINCIPLE}<|end|>\n<|user|>\n{INSTRUCTION}<|end|>\n<|assistant|>",
        ),
    ],
)
def test_the_principle_goes_where_the_original_put_it(tmp_path: Path, settings: dict[str, Any], expected: str):
    settings = {**settings, "chat_template": str(TEMPLATES / settings["chat_template"])}
    assert build(make_spec(tmp_path, settings)).prompt == expected


def test_default_system_appends_to_mpts_default_system_message(tmp_path: Path):
    spec = make_spec(
        tmp_path, {"chat_template": str(TEMPLATES / "mpt-chat.json"), "principle_placement": "default_system"}
    )
    prompt = build(spec).prompt
    assert prompt.startswith("<|im_start|>system\n- You are a helpful assistant chatbot trained by MosaicML.\n")
    assert prompt.endswith(
        f"make jokes. {PRINCIPLE}<|im_end|>\n<|im_start|>user\n{INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n"
    )


def test_without_a_principle_the_default_system_text_stays_alone(tmp_path: Path):
    spec = make_spec(
        tmp_path, {"chat_template": str(TEMPLATES / "vicuna-v1.1.json"), "principle_placement": "default_system"}
    )
    assert build(spec, principle="").prompt == f"{VICUNA_DEFAULT} USER: {INSTRUCTION} ASSISTANT:"


def test_default_system_on_a_template_without_a_default_text_is_a_spec_error(tmp_path: Path):
    path = str(TEMPLATES / "oasst-pythia.json")  # no system role at all
    spec = make_spec(tmp_path, {"chat_template": path, "principle_placement": "default_system"})
    with pytest.raises(SpecError, match=r"models\[0\] \(m0\)\.principle_placement=default_system: .*no system role"):
        builders(spec)
    (tmp_path / "t.jinja").write_text(  # a system block only when a system message is given
        "{% for m in messages %}{% if m.role == 'system' %}<sys>{{ m.content }}</sys>{% else %}{{ m.content }}"
        "{% endif %}{% endfor %}"
    )
    spec = make_spec(tmp_path, {"chat_template": "t.jinja", "principle_placement": "default_system"})
    with pytest.raises(
        SpecError, match=r"principle_placement=default_system: t\.jinja: the template writes no default"
    ):
        builders(spec)


def test_the_joiner_enters_the_identity_and_its_default_keeps_the_old_one(tmp_path: Path):
    path = str(TEMPLATES / "oasst-pythia.json")
    spec = make_spec(
        tmp_path,
        {"chat_template": path},
        {"chat_template": path, "principle_placement": "instruction", "principle_joiner": PRINCIPLE_SEPARATOR},
        {"chat_template": path, "principle_joiner": " "},
        {"chat_template": "server", "principle_placement": "instruction", "principle_joiner": ": "},
    )
    recipes = builders(spec)
    assert recipes["m0"].identity == recipes["m1"].identity != recipes["m2"].identity
    assert (
        recipes["m0"].identity
        == "template:oasst-pythia.json@"
        + content_key("prompt-template", recipes["m0"].template.digest, "instruction", PRINCIPLE_SEPARATOR)[:12]
    )
    assert recipes["m3"].identity == 'server+principle=instruction+joiner=": "'
    assert build(spec, "m3").messages == [{"role": "user", "content": f"{PRINCIPLE}: {INSTRUCTION}"}]


def test_contradicting_principle_settings_are_refused_when_the_spec_is_read(tmp_path: Path):
    with pytest.raises(SpecError) as err:
        make_spec(
            tmp_path,
            {"chat_template": "server", "principle_placement": "default_system"},
            {"principle_placement": "system", "principle_joiner": " "},
            {"prompt_format": "llama-2", "principle_joiner": " "},
            {"principle_placement": "default_system"},
        )
    assert [line.split(":")[0] for line in str(err.value).splitlines()] == [
        "models[0] (m0).principle_placement=default_system, models[0] (m0).chat_template=server",
        "models[1] (m1).principle_joiner, models[1] (m1).principle_placement=system",
        "models[2] (m2).principle_joiner, models[2] (m2).prompt_format=llama-2",
        "models[3] (m3).principle_placement=default_system, models[3] (m3).chat_template=unset",
    ]
