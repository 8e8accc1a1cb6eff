"""Response streams of invoke_endpoint_with_response_stream: PayloadPart bytes reassembled
into whole JSON lines, and the stream's error events as StreamError."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from lmiflow.targets.aws_requests import aws_error


class StreamError(RuntimeError):
    """A ModelStreamError or InternalStreamFailure event in a response stream."""

    def __init__(self, kind: str, message: str, code: str | None = None):
        self.kind = kind
        self.code = code
        super().__init__(f"{kind}: {message}" + (f" (code {code})" if code else ""))


def iter_json_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Whole lines (without the newline) from chunks whose boundaries fall anywhere, as
    invoke_endpoint_with_response_stream's PayloadPart events do. Blank lines are skipped; a
    last line without a newline is still yielded."""
    buf = b""
    for chunk in chunks:
        buf += chunk
        if b"\n" not in chunk:
            continue
        *lines, buf = buf.split(b"\n")
        for line in lines:
            line = line.rstrip(b"\r")
            if line.strip():
                yield line
    if buf.strip():
        yield buf.rstrip(b"\r")


def payload_parts(events: Iterable[dict]) -> Iterator[bytes]:
    """PayloadPart bytes from a response stream. botocore raises error events (ModelStreamError,
    InternalStreamFailure) as EventStreamError; they become StreamError here."""
    it = iter(events)
    while True:
        try:
            event = next(it)
        except StopIteration:
            return
        except Exception as exc:
            code, msg = aws_error(exc)
            if code in ("ModelStreamError", "InternalStreamFailure"):
                raise StreamError(code, msg) from exc
            raise
        if "PayloadPart" in event:
            yield event["PayloadPart"].get("Bytes", b"")
        elif "ModelStreamError" in event:
            e = event["ModelStreamError"]
            raise StreamError("ModelStreamError", e.get("Message", ""), e.get("ErrorCode"))
        elif "InternalStreamFailure" in event:
            raise StreamError("InternalStreamFailure",
                              event["InternalStreamFailure"].get("Message", ""))
