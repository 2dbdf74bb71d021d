"""URIs as shown to people (stats, logs, loader statistics): no credentials, no connection options."""
from __future__ import annotations

import re


def redact(uri: str) -> str:
    """`s3://key:secret@bucket/x.tar?endpoint_override=...` -> `s3://bucket/x.tar` (local paths unchanged)."""
    if "://" not in uri:
        return uri
    head = uri.partition("?")[0]
    return re.sub(r"^([a-zA-Z][\w+.-]*://)[^/@]*@", r"\1", head)
