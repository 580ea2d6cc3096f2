"""The paper's spec (6 sources, 17 models, a GPT-4-class judge) dry-run against the simulator: every
endpoint overridden to it through a proxy that records what each model was sent, the shipped
sample sources, small gates.

Per open model, the prompt sent is the model's chat template applied to the principle and the
instruction, the principle placed as the spec says (where the original put it), computed here by
transformers' own ``apply_chat_template`` from the tokenizer config the spec names: the shipped
ones (``deployments/chat_templates/``), one this test writes for pythia-12b (a template without a
system role, whose tokenizer adds BOS itself), and the server's template for mpt-30b-chat (chat
messages). Nothing is downloaded."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from tests.recording_proxy import RecordingProxy
from ultrafeedback.infra.simulator.config import SimulatorConfig
from ultrafeedback.infra.simulator.server import Simulator

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "deployments" / "specs" / "ultrafeedback.yaml"
API_MODELS = {"gpt-4", "gpt-3.5-turbo", "bard"}
PYTHIA = {  # a tokenizer config of the test's own: no system role, BOS written by the template
    "bos_token": "<|bos|>",
    "eos_token": "<|endoftext|>",
    "add_bos_token": True,
    "chat_template": "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('no system role') }}"
    "{% endif %}{{ bos_token if loop.first }}<|{{ m.role }}|>{{ m.content }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}",
}


DEFAULT_SYSTEM = {  # what each shipped template writes without a system message (the original's FastChat texts)
    "vicuna-v1.1.json": "A chat between a curious user and an artificial intelligence assistant. The assistant "
    "gives helpful, detailed, and polite answers to the user's questions.",
    "ultralm.json": "A one-turn chat between a curious user and an artificial intelligence assistant. The "
    "assistant gives helpful, very detailed, and polite answers to the user's questions.",
    "alpaca.json": "Below is an instruction that describes a task. Write a response that appropriately completes "
    "the request.",
    "mpt-chat.json": "- You are a helpful assistant chatbot trained by MosaicML.\n- You answer questions.\n- You are "
    "excited to be able to help the user, but will refuse to do anything that could be considered harmful to the "
    "user.\n- You are more than just an information source, you are also able to write poetry, short stories, and "
    "make jokes.",
    "falcon-instruct.json": "",
}


def transformers_prompt(
    config: dict[str, Any], principle: str, instruction: str, entry: dict[str, Any], template_file: str
) -> str:
    """transformers' apply_chat_template with the config's template and tokens, the principle placed
    as the entry says: the system message (auto: when the template shows one, else before the
    instruction), appended to the template's default system text, before the instruction, or not at all."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tokens = {key: config[key] for key in ("bos_token", "eos_token", "unk_token") if key in config}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")), **tokens
    )
    tokenizer.chat_template = config["chat_template"]

    def render(messages: list[dict[str, str]]) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    placement = entry.get("principle_placement", "auto")
    if placement == "auto":  # does the template show a system message?
        try:
            shown = "\x01probe" in render([_message("system", "\x01probe"), _user("?")])
        except Exception:  # noqa: BLE001 - jinja2's TemplateError from raise_exception
            shown = False
        placement = "system" if shown else "instruction"
    if placement == "system":
        text = render([_message("system", principle), _user(instruction)])
    elif placement == "default_system":
        joined = DEFAULT_SYSTEM[template_file] + entry.get("principle_joiner", " ") + principle
        text = render([_message("system", joined), _user(instruction)])
    elif placement == "instruction":
        text = render([_user(principle + entry.get("principle_joiner", "\n\n") + instruction)])
    else:
        text = render([_user(instruction)])
    bos = config.get("bos_token")
    if config.get("add_bos_token") and bos and text.startswith(bos):  # the server adds it to plain text
        text = text[len(bos) :]
    return text


def _message(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def _user(content: str) -> dict[str, str]:
    return _message("user", content)


def test_paper_spec_builds_against_the_simulator(prefect_harness, tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    import datasets
    import yaml

    from ultrafeedback.flows.build import build
    from ultrafeedback.infra.simulator.content import classify
    from ultrafeedback.infra.store import Store
    from ultrafeedback.records import Completion
    from ultrafeedback.tasks.common import read_requests

    (tmp_path / "pythia").mkdir()
    (tmp_path / "pythia" / "tokenizer_config.json").write_text(json.dumps(PYTHIA))
    monkeypatch.setenv("OPENAI_API_KEY", "simulated")
    monkeypatch.setenv("GEMINI_API_KEY", "simulated")
    with Simulator(SimulatorConfig(seed=2)) as sim, RecordingProxy(sim.url) as proxy:
        overrides = [
            f"store={tmp_path / 'store'}",
            *(f"endpoints.{name}.base_url={proxy.url}" for name in ("openai", "bard", "vllm")),
            # the hub is unreachable here: TruthfulQA comes from the demo's sample file instead
            "sources.truthful_qa.loader=csv",
            "sources.truthful_qa.path=../data/sample_truthfulqa.csv",
            f"models.pythia-12b.chat_template={tmp_path / 'pythia'}",
            "models.mpt-30b-chat.chat_template=server",
            "models.mpt-30b-chat.principle_placement=system",  # the server's default system text is not known here
            "gates.min_instructions=1",
            "gates.min_pairs=1",
            "binarize.test_size=0.3",
            "binarize.exclude_sources=[]",
            "execution.shard_size=8",
            "execution.worker_processes=0",  # the spec is the subject here, not the worker process
            "gates.data_docs=false",
        ]
        uri = build(spec_path=str(SPEC), overrides=overrides)

    completions = datasets.load_dataset(uri, name="completions", split="train")
    assert sorted(set(completions["source"])) == [
        "evol_instruct",
        "false_qa",
        "flan",
        "sharegpt",
        "truthful_qa",
        "ultrachat",
    ]
    for row in completions:
        assert len({c["model"] for c in row["completions"]}) == 4
        assert all(c["judge_model"] == "gpt-4-0613" and c["judge_kind"] == "model" for c in row["completions"])
        assert all("\n\n\n\n" not in c["response"] for c in row["completions"])
    flan = [row for row in completions if row["source"] == "flan"]
    assert all(row["correct_answers"] != ["None"] for row in flan)

    # ---- what each model was sent
    store = Store(str(tmp_path / "store"), "ultrafeedback")
    requests = read_requests(store)
    texts = {row["id"]: row["instruction"] for row in store.log("instructions").read(["id", "instruction"]).to_pylist()}
    entries = {m["id"]: m for m in yaml.safe_load(SPEC.read_text())["models"]}
    sent: dict[str, list[Any]] = defaultdict(list)  # served model -> its generation bodies
    for path, body in proxy.bodies:  # gpt-4 generates and judges: the simulator tells the calls apart
        user = body["messages"][-1]["content"] if "messages" in body else body["prompt"]
        if classify(user)[0] == "generation":
            sent[body["model"]].append((path, body))
    checked = set()
    for model, entry in entries.items():
        mine = [r for r in requests if r.model == model]
        if not mine:
            continue
        bodies = sent[entry["model"]]
        assert len(bodies) == len(mine), model  # the simulator injects no faults: one call per request
        assert all(json.loads(r.sampling_json)["cut_at"] == "\n\n\n\n" for r in mine)
        if model in API_MODELS or model == "mpt-30b-chat":  # chat messages: the server's template
            expected = Counter(
                json.dumps([_message("system", r.system_prompt.strip()), _user(texts[r.instruction_id])]) for r in mine
            )
            assert {path for path, _ in bodies} == {"/v1/chat/completions"}, model
            assert Counter(json.dumps(body["messages"]) for _, body in bodies) == expected, model
            assert all("cut_at" not in body for _, body in bodies)
        else:
            source = tmp_path / "pythia" / "tokenizer_config.json" if model == "pythia-12b" else None
            source = source or (SPEC.parent / entry["chat_template"]).resolve()
            config = json.loads(source.read_text())
            expected = Counter(
                transformers_prompt(config, r.system_prompt.strip(), texts[r.instruction_id], entry, source.name)
                for r in mine
            )
            assert {path for path, _ in bodies} == {"/v1/completions"}, model
            assert Counter(body["prompt"] for _, body in bodies) == expected, model
            assert all(config["eos_token"] in body["stop"] for _, body in bodies), model
            name = "pythia" if model == "pythia-12b" else source.name  # a folder is named after itself
            assert all(r.prompt_template.startswith(f"template:{name}@") for r in mine), model
        checked.add(model)
    assert checked >= {"pythia-12b", "mpt-30b-chat", "llama-2-7b-chat"}
    assert checked & {"ultralm-13b", "ultralm-65b"} and checked & {"vicuna-33b", "wizardlm-13b", "wizardlm-30b"}
    assert len(checked - API_MODELS) >= 8, checked  # most of the 14 open models drew a request

    # ---- each completion records the template that produced its prompt
    stored = {row["request_id"]: row for row in store.results("completions", Completion, key="request_id").rows()}
    assert {stored[r.request_id]["prompt_template"] for r in requests} == {r.prompt_template for r in requests}
    assert all(stored[r.request_id]["prompt_template"] == r.prompt_template for r in requests)
    pythia = {r.prompt_template for r in requests if r.model == "pythia-12b"}
    assert len(pythia) == 1 and pythia.pop().startswith("template:pythia@")
