"""Load client for `hippo bench serve`: one burst of concurrent streamed completions through the
official OpenAI Python SDK, timed from the client's side.

Reads one JSON object on stdin: base_url, model, prompt, max_tokens, streams, api_key (optional).
Writes one JSON object on stdout: wall (seconds, first request sent to last stream ended) and, per
stream, ttft (seconds to the first non-empty text), gaps (seconds between later text chunks),
completion_tokens (from the usage chunk, else the number of text chunks) and finish_reason.
"""

import json
import sys
import threading
import time

import openai


def stream(client, req, out, start):
    ttft, gaps, last, chunks, usage, finish = None, [], None, 0, None, None
    try:
        resp = client.completions.create(
            model=req["model"], prompt=req["prompt"], max_tokens=req["max_tokens"],
            temperature=0, stream=True, stream_options={"include_usage": True},
        )
        for chunk in resp:
            if chunk.usage is not None:
                usage = chunk.usage.completion_tokens
            for ch in chunk.choices or []:
                if ch.finish_reason:
                    finish = ch.finish_reason
                if not ch.text:
                    continue
                now = time.perf_counter()
                if last is None:
                    ttft = now - start
                else:
                    gaps.append(now - last)
                last = now
                chunks += 1
        out.update(ttft=ttft, gaps=gaps, completion_tokens=usage if usage is not None else chunks,
                   finish_reason=finish)
    except Exception as e:  # reported to the Go side, which fails the run
        out["error"] = f"{type(e).__name__}: {e}"


def main():
    req = json.load(sys.stdin)
    client = openai.OpenAI(base_url=req["base_url"], api_key=req.get("api_key") or "none",
                           max_retries=0, timeout=600)
    n = req["streams"]
    outs = [{} for _ in range(n)]
    start = time.perf_counter()
    threads = [threading.Thread(target=stream, args=(client, req, outs[i], start)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    json.dump({"wall": wall, "streams": outs}, sys.stdout)


if __name__ == "__main__":
    main()
