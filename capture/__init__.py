"""The capture record shared by the proxy and the sinks: pure, no I/O."""

from capture.record import (
    SCHEMA_VERSION,
    CaptureRecord,
    InvalidRecord,
    Request,
    Response,
    UnknownVersion,
    canonical_ip,
    decode,
    decode_body,
    encode,
    encode_body,
    format_time,
    from_dict,
    parse_time,
    validate,
    wire_text,
)

__all__ = [
    "SCHEMA_VERSION",
    "CaptureRecord",
    "InvalidRecord",
    "Request",
    "Response",
    "UnknownVersion",
    "canonical_ip",
    "decode",
    "decode_body",
    "encode",
    "encode_body",
    "format_time",
    "from_dict",
    "parse_time",
    "validate",
    "wire_text",
]
