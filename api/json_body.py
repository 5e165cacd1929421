"""The request body as one strict UTF-8 JSON document, read once: 413 past a size limit, 400 otherwise."""
import codecs
import json
import re

import falcon

from api.errors import Problem

MAX_BODY_BYTES = 64 * 1024


HUGE_DIGITS = 40  # no field takes an integer this long: each is refused as over its limit (422)


def _bounded_int(digits: str) -> int:
    """An integer literal; one longer than HUGE_DIGITS stands as 10**HUGE_DIGITS, over every field's limit,
    rather than being converted (Python refuses past 4,300 digits with a message about its own settings)."""
    if len(digits.lstrip("-")) <= HUGE_DIGITS:
        return int(digits)
    return -(10**HUGE_DIGITS) if digits.startswith("-") else 10**HUGE_DIGITS


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _no_duplicates(pairs: list) -> dict:
    """An object with a key given twice is refused, not resolved: {"amountCents": 1, "amountCents": 100000}
    must not silently mean either amount."""
    seen = set()
    for key, _ in pairs:
        if key in seen:
            raise ValueError(f"duplicate key {json.dumps(key)} in an object; give each field once")
        seen.add(key)
    return dict(pairs)


def raw_body(req: falcon.Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The body's bytes, read once (413 past the limit) and kept on the request."""
    raw = getattr(req.context, "raw_body", None)
    if raw is None:
        if req.content_length is not None and req.content_length > limit:
            raise _too_large(limit)
        raw = req.bounded_stream.read(limit + 1) if req.content_length is not None else _unsized(req, limit + 1)
        if len(raw) > limit:
            raise _too_large(limit)
        req.context.raw_body = raw
    return raw


def _too_large(limit: int) -> Problem:
    return Problem(413, "Content Too Large", f"request bodies are limited to {limit} bytes")


def _unsized(req: falcon.Request, most: int) -> bytes:
    """Up to `most` bytes of a body sent without Content-Length (chunked), which Falcon's bounded_stream
    reads as empty. Only a server that ends wsgi.input with the body (granian, gunicorn) is read: elsewhere
    the read could wait for the client to close. No JSON endpoint takes an empty body sent chunked: 400."""
    if not req.env.get("wsgi.input_terminated"):
        return b""
    chunks, size = [], 0
    try:
        while size < most:
            chunk = req.stream.read(most - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except Exception:  # the server's own error for broken chunk framing, or for a client gone mid-body
        raise Problem(400, "Bad Request", "the chunked request body is malformed or ended early") from None
    if not chunks:  # granian hands the app a body whose chunk framing is broken as an empty one, then closes
        raise Problem(400, "Bad Request", "the chunked request body is empty, or its chunk framing is broken",
                      headers={"Connection": "close"})
    return b"".join(chunks)


MAX_DEPTH = 32


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACKET = re.compile(r"[\[\]{}]")


def _nesting_depth(text: str) -> int:
    """The deepest [ or { nesting outside strings, found before parsing (the parser recurses)."""
    depth = deepest = 0
    for bracket in _BRACKET.findall(_STRING.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


BYTE_ORDER_MARKS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"), (codecs.BOM_UTF8, "UTF-8"),
                    (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16"))
_MARKS = tuple(mark for mark, _ in BYTE_ORDER_MARKS)


def _utf8_text(raw: bytes) -> str:
    """The body as text: UTF-8 without a byte order mark (RFC 8259), else 400 saying what it is instead."""
    if raw.startswith(_MARKS):
        bom = next(name for mark, name in BYTE_ORDER_MARKS if raw.startswith(mark))
        raise Problem(400, "Bad Request", f"the body starts with a {bom} byte order mark; send UTF-8 JSON without one")
    if b"\x00" in raw:  # JSON text never holds a NUL byte; UTF-16 and UTF-32 text is full of them
        raise Problem(400, "Bad Request", "the body holds NUL bytes: it is not UTF-8 JSON (UTF-16 or UTF-32?)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Problem(400, "Bad Request", f"the body is not UTF-8: byte 0x{raw[exc.start]:02x} at offset "
                                          f"{exc.start} is not valid there") from None


def _has_lone_surrogate(text: str, data: object) -> bool:
    """A \\ud800-style escape without its pair decodes to a string that is not text (nor storable)."""
    if "\\u" not in text:
        return False
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


# json.loads(text, **these) makes this decoder anew on every call
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, object_pairs_hook=_no_duplicates, parse_int=_bounded_int)


def read_json(req: falcon.Request) -> object:
    """The body as JSON: 413 past 64 KiB, 400 for anything that is not one strict UTF-8 JSON document."""
    if hasattr(req.context, "json_body"):
        return req.context.json_body
    raw = raw_body(req)
    if not raw.strip():
        return {}
    if req.content_type and not req.content_type.split(";")[0].strip().lower().endswith("json"):
        raise Problem(400, "Bad Request", "the body must be JSON (Content-Type: application/json)")
    text = _utf8_text(raw)
    if text.count("[") + text.count("{") > MAX_DEPTH and _nesting_depth(text) > MAX_DEPTH:  # a level opens one
        raise Problem(400, "Bad Request", f"the body nests deeper than {MAX_DEPTH} levels")
    try:
        data = _DECODER.decode(text)
    except (ValueError, RecursionError) as exc:
        raise Problem(400, "Bad Request", f"the body is not valid JSON: {exc}") from None
    if _has_lone_surrogate(text, data):
        raise Problem(400, "Bad Request", "the body holds a lone UTF-16 surrogate escape (such as \\ud800), "
                                          "which is not text")
    req.context.json_body = data
    return data
