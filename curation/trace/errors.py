"""The one error a trace raises. The CLI shows its message as the whole answer, so it always names
what was missing or malformed and where the trace looked."""


class TraceError(ValueError):
    """What was asked for is not in the outputs; the message says where we looked."""
