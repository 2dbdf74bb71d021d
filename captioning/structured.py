"""caption.fields: a structured caption per clip (MiraData's short / dense / main object / background / style /
camera movement by default), as JSON checked against one schema for every engine.

    clip frames ─► the caption request ─► caption (text)
                └► the fields request (same frames, same engine batch) ─► JSON ─► schema check ─► field_<name>

vLLM (offline `structured_outputs`, or `vllm serve` via `response_format`) constrains decoding to the schema,
so its answers parse by construction; transformers generates freely and the same schema is checked after.
An answer that fails is generated again (`fields.retry_bad`), then the clip keeps its caption, its field
columns stay null and it gets the flag `fields_invalid`.
"""
from __future__ import annotations

import json
import re
from typing import Callable

from captioning.checks import check_columns
from captioning.config import CaptionConfig, FieldsConfig
from captioning.engines.base import Engine, Generation, SamplingParams
from captioning.postprocess import RETRY_TEMPERATURE
from captioning.prompts import Prompt

INVALID = "fields_invalid"  # flag of a clip whose fields answer never matched the schema


def fields_schema(names: dict[str, str], max_chars: int = 1500) -> dict:
    """JSON schema of the answer: an object with exactly these non-empty string fields."""
    return {"type": "object", "additionalProperties": False, "required": list(names),
            "properties": {k: {"type": "string", "minLength": 1, "maxLength": max_chars, "description": d}
                           for k, d in names.items()}}


def fields_regex(names: dict[str, str], max_chars: int = 1500) -> str:
    """The schema's answers in compact form as one regular expression (vLLM's constraint: its JSON grammar
    allows free whitespace, in which a weak model can stall until max_tokens). Values are printable ASCII
    without quote or backslash (a class every regex backend reads the same), so every match parses and
    validates; a model that would write other characters is held to ASCII."""
    value = '"[ -!#-\\[\\]-~]{1,%d}"' % max_chars
    return "\\{" + ",".join(f'"{k}":{value}' for k in names) + "\\}"


def fields_prompt(names: dict[str, str]) -> Prompt:
    """The VLM prompt of the fields request (its hash changes with the field list)."""
    listing = "\n".join(f'- "{k}": {d}' for k, d in names.items())
    return Prompt("fields-v1", None,
                  "Describe this video as a JSON object with exactly these string fields:\n" + listing +
                  "\nDescribe only what is visible. Answer with the JSON object only.")


_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$")


def parse_fields(text: str, schema: dict) -> dict[str, str]:
    """The fields of a model answer; ValueError saying what is wrong when it does not match `schema`.

    Tolerates a Markdown code fence around the object (small models add one); nothing else."""
    import jsonschema

    body = _FENCE.sub("", (text or "").strip())
    try:
        value = json.loads(body)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON: {e.msg} at char {e.pos}") from None
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError as e:
        raise ValueError(f"schema: {e.message}") from None
    return {k: value[k].strip() for k in schema["properties"]}


def empty_columns(names: dict[str, str]) -> dict[str, None]:
    return {f"field_{k}": None for k in names}


def fields_columns(generate: Callable[[list[int], Prompt, SamplingParams], list[Generation]], n: int, cfg: FieldsConfig,
                   retry_bad: int | None = None) -> list[tuple[dict, list[str]]]:
    """For n requests: ({field_<name>: value or None}, flags), via `generate(indices, prompt, params)`,
    which sends the fields prompt with the same frames as the caption requests."""
    from dataclasses import replace

    schema = fields_schema(cfg.names, cfg.max_chars)
    prompt = fields_prompt(cfg.names)
    params = SamplingParams(cfg.max_tokens, 0.0, 1.0, json_schema=schema, regex=fields_regex(cfg.names, cfg.max_chars))
    out: list[tuple[dict, list[str]]] = [(empty_columns(cfg.names), [INVALID]) for _ in range(n)]
    todo = list(range(n))
    for attempt in range(1 + (cfg.retry_bad if retry_bad is None else retry_bad)):
        if not todo:
            break
        p = params if attempt == 0 else replace(params, temperature=RETRY_TEMPERATURE, seed=attempt)
        try:
            gens = generate(todo, prompt, p)
        except Exception:  # the engine broke: the fields stay empty and flagged, the caption stands
            break
        failed = []
        for i, g in zip(todo, gens):
            try:
                if g.error:
                    raise ValueError(g.error)
                out[i] = ({f"field_{k}": v for k, v in parse_fields(g.text, schema).items()}, [])
            except ValueError:
                failed.append(i)
        todo = failed
    return out


def structured_columns(engine: Engine, reqs: list, caption_prompt: Prompt, results: list[tuple],
                       cfg: CaptionConfig) -> list[tuple[dict, list[str]]]:
    """The field_/check_ columns and extra flags of each captioned request of the caption stage (`results`:
    generate_judged's (generation, text, flags) per request). Requests whose caption failed get none."""
    ok = [i for i, (g, _, _) in enumerate(results) if g.error is None]
    out: list[tuple[dict, list[str]]] = [({}, []) for _ in reqs]
    if cfg.fields.enabled and ok:
        cols = fields_columns(lambda idx, p, sp: engine.generate([reqs[ok[i]] for i in idx], p, sp), len(ok),
                              cfg.fields)
        for i, (c, flags) in zip(ok, cols):
            out[i] = ({**out[i][0], **c}, out[i][1] + flags)
    if cfg.checks.enabled and ok:
        cols = check_columns(lambda rs, p: engine.generate(rs, caption_prompt, p), [reqs[i] for i in ok], cfg.checks)
        for i, c in zip(ok, cols):
            out[i] = ({**out[i][0], **c}, out[i][1])
    return out
