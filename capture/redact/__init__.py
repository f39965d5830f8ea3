"""Redaction: what of an exchange may leave the proxy for a public bucket (docs/security.md).

`names` judges header and field names, `text` finds secrets in free text, `decode` undoes
content codings and charsets within bounds, `body` reads a body by its structure, and
`redactor` holds the key and the policy and redacts headers, the request target and bodies.
"""

from capture.redact.body import redact_body
from capture.redact.redactor import MARKER, PREFIX, Body, BudgetExceeded, Policy, Redactor

__all__ = ["MARKER", "PREFIX", "Body", "BudgetExceeded", "Policy", "Redactor", "redact_body"]
