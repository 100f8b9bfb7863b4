"""Drives a running `hippo serve` with the official openai SDK, as a real client would.

Usage: openai_client.py BASE_URL API_KEY MODEL. Prints one JSON object with what it saw; any
mismatch raises (non-zero exit), with the reason on stderr.
"""

import json
import sys

import openai

base_url, key, model = sys.argv[1:4]
client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=60)
out = {"sdk_version": openai.__version__}

# List models.
ids = [m.id for m in client.models.list().data]
assert ids == [model], f"models.list() = {ids}; want [{model!r}]"
out["models"] = ids

messages = [{"role": "user", "content": "Name three colours."}]

# Chat, non-streaming, greedy.
chat = client.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0, seed=1)
choice = chat.choices[0]
assert chat.object == "chat.completion", chat.object
assert choice.message.role == "assistant", choice.message.role
assert choice.finish_reason in ("stop", "length"), choice.finish_reason
assert chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens, chat.usage
out["chat"] = {"text": choice.message.content, "finish": choice.finish_reason,
               "prompt_tokens": chat.usage.prompt_tokens, "completion_tokens": chat.usage.completion_tokens}

# Chat, streaming with usage: the same greedy text, token by token.
text, finish, usage, chunks = "", None, None, 0
stream = client.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0,
                                        stream=True, stream_options={"include_usage": True})
for chunk in stream:
    assert chunk.object == "chat.completion.chunk", chunk.object
    chunks += 1
    if chunk.usage is not None:
        assert chunk.choices == [], "the usage chunk must have no choices"
        usage = chunk.usage
    for c in chunk.choices:
        text += c.delta.content or ""
        finish = c.finish_reason or finish
assert usage is not None, "no usage chunk with include_usage"
assert text == choice.message.content, f"streamed {text!r}; non-streamed {choice.message.content!r}"
assert finish == choice.finish_reason, (finish, choice.finish_reason)
assert usage.completion_tokens == chat.usage.completion_tokens and usage.prompt_tokens == chat.usage.prompt_tokens, usage
out["stream"] = {"text": text, "finish": finish, "chunks": chunks}

# Text completion.
comp = client.completions.create(model=model, prompt="The harbour at dawn", max_tokens=6, temperature=0)
assert comp.object == "text_completion", comp.object
assert comp.usage.completion_tokens == 6 or comp.choices[0].finish_reason == "stop", comp
out["completion"] = {"text": comp.choices[0].text, "finish": comp.choices[0].finish_reason,
                     "prompt_tokens": comp.usage.prompt_tokens}

# Stop sequence taken from the middle of the greedy reply: the reply must end right before it.
full = choice.message.content
stop = full[3:6] if len(full) >= 6 else None
if stop and stop.strip():
    cut = client.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0, stop=[stop])
    want = full[: full.index(stop)]
    assert cut.choices[0].message.content == want, f"with stop {stop!r}: {cut.choices[0].message.content!r}; want {want!r}"
    assert cut.choices[0].finish_reason == "stop", cut.choices[0].finish_reason
    out["stop"] = {"stop": stop, "text": cut.choices[0].message.content}

# Errors map to the SDK's exception classes.
try:
    openai.OpenAI(base_url=base_url, api_key="sk-wrong", max_retries=0).models.list()
    raise AssertionError("a wrong key was accepted")
except openai.AuthenticationError as e:
    out["wrong_key"] = e.status_code
try:
    client.chat.completions.create(model="no-such-model", messages=messages, max_tokens=2)
    raise AssertionError("an unknown model was accepted")
except openai.NotFoundError as e:
    out["unknown_model"] = e.status_code
try:
    client.chat.completions.create(model=model, messages=messages, max_tokens=2, n=2)
    raise AssertionError("n=2 was accepted")
except openai.BadRequestError as e:
    out["n2"] = e.body.get("param") if isinstance(e.body, dict) else None

print(json.dumps(out))
