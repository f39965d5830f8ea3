"""What the proxy and the sinks share. The capture record (pure, no I/O) is exported here;
the rest is imported by its module: `capture.settings` (reading the environment),
`capture.endpoint` (the metrics endpoint), `capture.topics` (the Kafka topics),
`capture.lake_layout` (the lake's object keys), `capture.logs` and `capture.redact`. Importing
`capture` loads the record alone, and nothing in it imports the proxy or the sinks."""

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
    decode_json,
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
    "decode_json",
    "encode",
    "encode_body",
    "format_time",
    "from_dict",
    "parse_time",
    "validate",
    "wire_text",
]
