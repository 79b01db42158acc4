"""The official OpenAI Python SDK against a running gateway (issue 6).

The gateway fronts the mock upstream with three backends: `oai` (OpenAI passthrough, whose
/v1/responses answers 404 so the Responses shim kicks in), `claude` (provider anthropic) and
`gem` (provider gemini). Run by scripts/sdk_test.sh, which starts both and sets GATEWAY_URL.
Plain script: every check is an assert, the first failure exits non-zero.
"""

import json
import os
import sys

import openai

BASE = os.environ["GATEWAY_URL"].rstrip("/") + "/v1"
client = openai.OpenAI(base_url=BASE, api_key="sk-sdk", max_retries=0, timeout=30)

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
MODELS = ["gpt-4o", "claude-test", "gemini-2.0-flash"]
TEXT = "tok0 tok1 tok2 tok3 tok4 "


def check_chat():
    for model in MODELS:
        r = client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": "Say hello."}]
        )
        c = r.parse()
        assert c.choices[0].message.content == TEXT, (model, c)
        assert c.choices[0].finish_reason == "stop", (model, c)
        assert c.usage and c.usage.total_tokens > 0, (model, c)
        if model != "gpt-4o":
            assert r.headers.get("x-ditto-translation"), (model, dict(r.headers))
        print(f"ok chat {model}")


def check_stream_with_tools():
    for model in MODELS[1:]:
        stream = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Weather in Paris?"}],
            tools=TOOLS,
            stream=True,
            stream_options={"include_usage": True},
        )
        text, args, name, finish, usage = "", "", None, None, None
        for chunk in stream:
            if chunk.usage:
                usage = chunk.usage
            for ch in chunk.choices:
                d = ch.delta
                if d.content:
                    text += d.content
                for tc in d.tool_calls or []:
                    if tc.function and tc.function.name:
                        name = tc.function.name
                    if tc.function and tc.function.arguments:
                        args += tc.function.arguments
                if ch.finish_reason:
                    finish = ch.finish_reason
        assert text.startswith("tok0"), (model, text)
        assert name == "get_weather", (model, name)
        assert json.loads(args) == {"city": "Paris", "days": 3}, (model, args)
        assert finish == "tool_calls", (model, finish)
        assert usage and usage.total_tokens > 0, (model, usage)
        print(f"ok stream+tools {model}")


def check_responses():
    for model in MODELS:
        r = client.responses.with_raw_response.create(
            model=model, instructions="Be brief.", input="Say hello.", max_output_tokens=50
        )
        assert r.headers.get("x-ditto-shim") == "responses_via_chat_completions", dict(r.headers)
        resp = r.parse()
        assert resp.status == "completed", (model, resp)
        assert resp.output_text == TEXT, (model, resp.output_text)
        assert resp.usage and resp.usage.total_tokens > 0, (model, resp)
        print(f"ok responses {model}")

        kinds, text, final = [], "", None
        with client.responses.stream(
            model=model,
            input="Weather in Paris?",
            tools=[{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}],
        ) as s:
            for ev in s:
                kinds.append(ev.type)
                if ev.type == "response.output_text.delta":
                    text += ev.delta
            final = s.get_final_response()
        assert kinds[0] == "response.created", kinds
        assert kinds[-1] == "response.completed", kinds
        assert text.startswith("tok0"), (model, text)
        assert final.usage and final.usage.total_tokens > 0, final
        if model != "gpt-4o":
            calls = [o for o in final.output if o.type == "function_call"]
            assert calls and json.loads(calls[0].arguments) == {"city": "Paris", "days": 3}, final
        print(f"ok responses stream {model}")


def check_errors():
    try:
        client.chat.completions.create(
            model="claude-test", n=2, messages=[{"role": "user", "content": "x"}]
        )
    except openai.BadRequestError as e:
        assert e.status_code == 400 and "n" in str(e), e
        print("ok 400 from an inexpressible request")
    else:
        raise AssertionError("n=2 to Anthropic must be refused")


if __name__ == "__main__":
    print(f"openai SDK {openai.__version__} against {BASE}")
    check_chat()
    check_stream_with_tools()
    check_responses()
    check_errors()
    print("sdk: all checks passed")
    sys.exit(0)
