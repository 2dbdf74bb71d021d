"""URIs as shown or stored: the one redaction of credentials used everywhere.

Object-store URIs may carry credentials (`s3://key:secret@bucket/x?session_token=...`) and connection
options (`?endpoint_override=...`). Tables, manifests, logs, error messages and the report only ever
see `redact(uri)`: no user info and no query. Ids are computed from the redacted form too
(curation.video.video_id_for), so a rotated key never changes an id. `scrub(text)` applies the same
redaction to every URI inside free text (error messages, log lines, config snapshots).
"""
from __future__ import annotations

import re
from typing import Any

_SCHEME = r"[a-zA-Z][\w+.-]*://"
_URI_IN_TEXT = re.compile(_SCHEME + r"[^\s'\"<>()\[\]{},]+")
# Query parameters that hold secrets in pyarrow.fs / S3 / GCS / Azure URIs and presigned URLs: removed
# from text even when they appear outside a URI (e.g. an option string in an error message).
_SECRET_PARAM = re.compile(r"(?i)\b((?:access_key|secret_key|session_token|secret|password|token|sig|signature|"
                           r"x-amz-[\w-]+|x-goog-[\w-]+|sas_token|account_key|credentials?)=)[^&\s'\"]+")


def redact(uri: str) -> str:
    """`s3://key:secret@bucket/x.tar?endpoint_override=...` -> `s3://bucket/x.tar` (local paths unchanged)."""
    if "://" not in uri:
        return uri
    head = uri.partition("?")[0].partition("#")[0]
    return re.sub(r"^(" + _SCHEME + r")[^/@]*@", r"\1", head)


def scrub(text: str) -> str:
    """`text` with every URI in it redacted (and any stray secret query parameter blanked)."""
    if "://" not in text and "=" not in text:
        return text
    return _SECRET_PARAM.sub(r"\1***", _URI_IN_TEXT.sub(_redact_match, text))


def _redact_match(m: re.Match) -> str:
    uri = m.group(0)
    core = uri.rstrip(":.;!?")  # punctuation after a URI in a sentence ("s3://b/x: cannot open")
    return redact(core) + uri[len(core):]


def scrub_obj(value: Any) -> Any:
    """scrub() applied to every string inside nested dicts / lists / tuples (manifests, config snapshots)."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: scrub_obj(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(scrub_obj(v) for v in value)
    return value
