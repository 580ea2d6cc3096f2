"""Run the real vLLM engine through a GPU job, on a tiny model: the check that the GPU worker's engine
environment works (not part of `make test`: it needs a GPU and vLLM).

    /opt/engine/bin/python infra/gpu-worker/check_vllm.py [--model HuggingFaceTB/SmolLM2-135M-Instruct]

It writes a job of three chat requests to a temporary store, runs it as the engine process of a GPU job
does (``tasks.generate.gpu_engine.run_job``: one ``vllm.LLM`` load, ``LLM.chat`` with the model's own
chat template, ``SamplingParams``, ``tensor_parallel_size``), prints the stored completions, runs the
job again (nothing is generated twice: every completion is stored) and checks that Prefect is not
importable here. Exit status 0 when all of that holds. The expected output is in the README.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile

from ultrafeedback.infra.store import Store
from ultrafeedback.keys import content_key
from ultrafeedback.records import CompletionRequest
from ultrafeedback.tasks.generate.gpu_engine import run_job
from ultrafeedback.tasks.generate.jobs import GpuJob, JobRequest

QUESTIONS = ["Name three primary colours.", "What is 12 times 7?", "Write one sentence about the sea."]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct", help="a hub id or a local folder")
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    args = parser.parse_args()
    if importlib.util.find_spec("prefect") is not None:
        print("check_vllm: FAIL: Prefect is importable in the engine environment", file=sys.stderr)
        return 1
    sampling = {"temperature": 0.0, "top_p": 1.0, "max_tokens": 32}
    requests = []
    for question in QUESTIONS:
        request = CompletionRequest(
            request_id=content_key("check-vllm", args.model, question),
            instruction_id=content_key("instruction", question),
            source="check",
            position=0,
            model="check",
            principle="helpfulness",
            system_prompt="Answer briefly.",
            prompt_format="server",
            prompt_template="server",
            sampling_json=json.dumps(sampling, sort_keys=True),
            shard=0,
        )
        messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": question}]
        requests.append(JobRequest(request=request, messages=messages, sampling=sampling, prompt_template="server"))
    job = GpuJob(
        job_id="check-vllm",
        model_id="check",
        model=args.model,
        engine={"tensor_parallel_size": args.tensor_parallel_size},
        batch_size=len(requests),
        requests=requests,
    )
    with tempfile.TemporaryDirectory() as folder:
        store = Store(folder, "check-vllm")
        first = run_job(store, job)
        table = store.log("completions").read(["request_id", "response", "output_tokens"])
        rows = {row["request_id"]: row for row in table.to_pylist()}
        for question, item in zip(QUESTIONS, requests, strict=True):
            row = rows.get(item.request.request_id)
            shown = "(not stored)" if row is None else f"{row['response'][:70]!r} ({row['output_tokens']} tokens)"
            print(f"{question!r} -> {shown}")
        second = run_job(store, job)
    ok = first["succeeded"] == len(QUESTIONS) and second["issued"] == 0 and second["skipped"] == len(QUESTIONS)
    print(
        f"first run: {first['succeeded']}/{len(QUESTIONS)} stored; "
        f"second run: {second['issued']} sent, {second['skipped']} already stored"
    )
    print("check_vllm: OK" if ok else "check_vllm: FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
