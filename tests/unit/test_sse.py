"""gateway/sse.py: the incremental SSE decoder on every way a stream can be cut, and encoding."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import orjson
import pytest

from gateway.sse import DONE, KEEPALIVE, NDJSONDecoder, SSEDecoder, SSEEvent, encode_event

# One stream with every feature the decoder handles; `\n` is replaced by each line end below.
LINES = [
    ": a comment before anything",
    'data: {"a": 1}',
    "",
    "event: message_start",
    'data: {"type": "start", "text": "h\\u00e9llo \\u2603"}',
    "",
    "data: line one",
    ": a comment inside an event",
    "data:no space after the colon",
    "data:  two spaces keep one",
    "data:",
    "data: last line",
    "",
    "id: 7",
    "retry: 1000",
    "unknown: field",
    "data: with id and retry",
    "",
    "event: ignored because no data follows",
    "",
    "data: [DONE]",
    "",
]
EXPECTED = [
    SSEEvent(b'{"a": 1}'),
    SSEEvent(b'{"type": "start", "text": "h\\u00e9llo \\u2603"}', "message_start"),
    SSEEvent(b"line one\nno space after the colon\n two spaces keep one\n\nlast line"),
    SSEEvent(b"with id and retry"),
    SSEEvent(b"[DONE]"),
]
LINE_ENDS = {"lf": b"\n", "crlf": b"\r\n", "cr": b"\r"}


def stream(line_end: bytes) -> bytes:
    return b"".join(line.encode() + line_end for line in LINES)


def decode(chunks: Iterable[bytes]) -> tuple[list[SSEEvent], SSEDecoder]:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    return events, decoder


def split_every(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def check(events: list[SSEEvent], decoder: SSEDecoder, line_end: str) -> None:
    if line_end == "cr":
        # A CR at the very end may be the first half of a CRLF: the last event waits for the
        # next byte, and any next byte releases it.
        assert events == EXPECTED[:-1]
        assert decoder.pending
        assert decoder.feed(b": next\r") == EXPECTED[-1:]
    else:
        assert events == EXPECTED
        assert not decoder.pending


@pytest.mark.parametrize("line_end", LINE_ENDS)
def test_the_whole_stream_in_one_chunk(line_end):
    events, decoder = decode([stream(LINE_ENDS[line_end])])

    check(events, decoder, line_end)


@pytest.mark.parametrize("line_end", LINE_ENDS)
def test_the_stream_byte_by_byte(line_end):
    data = stream(LINE_ENDS[line_end])

    events, decoder = decode(data[i : i + 1] for i in range(len(data)))

    check(events, decoder, line_end)


@pytest.mark.parametrize("line_end", LINE_ENDS)
def test_every_chunk_size_gives_the_same_events(line_end):
    data = stream(LINE_ENDS[line_end])

    for size in range(1, len(data) + 1):
        events, decoder = decode(split_every(data, size))
        check(events, decoder, line_end)


@pytest.mark.parametrize("line_end", LINE_ENDS)
def test_every_split_into_three_pieces_gives_the_same_events(line_end):
    # two cuts up to 24 bytes apart: every pair of boundaries within a line or two of each other
    data = stream(LINE_ENDS[line_end])

    for first in range(1, len(data)):
        for second in range(first + 1, min(first + 25, len(data))):
            events, decoder = decode(split_at(data, [first, second]))
            check(events, decoder, line_end)


def test_mixed_line_ends_in_one_stream():
    data = b"data: a\r\ndata: b\rdata: c\n\r\ndata: d\n\n: end\r\n"

    for cut in range(len(data) + 1):
        events, decoder = decode(split_at(data, [cut]))
        assert events == [SSEEvent(b"a\nb\nc"), SSEEvent(b"d")]
        assert not decoder.pending  # the trailing comment line was complete


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        pytest.param([b"data: a\r", b"\ndata: b\r\n\r\n"], b"a\nb", id="after-a-data-line"),
        pytest.param([b"data: a\r\n\r", b"\n"], b"a", id="in-the-blank-line"),
        pytest.param([b"data: a\r\ndata: b\r", b"\n\r", b"\n"], b"a\nb", id="two-boundaries"),
        pytest.param(
            [b"data: a\r", b"\n", b"data: b\r", b"\n", b"\r", b"\n"], b"a\nb", id="every-cr-alone"
        ),
    ],
)
def test_a_crlf_split_at_a_chunk_boundary_is_one_line_end(chunks, expected):
    # Were the CR taken for a line end of its own, its LF would make a blank line and end the
    # event early, splitting "a" and "b" into two events.
    events, decoder = decode(chunks)

    assert events == [SSEEvent(expected)]
    assert not decoder.pending


def test_a_cr_then_a_non_lf_byte_ends_the_line():
    decoder = SSEDecoder()

    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\r") == []  # the first CR is a line end now; the second may be CRLF
    assert decoder.feed(b"data: b") == [SSEEvent(b"a")]


def test_an_event_name_applies_to_its_event_only():
    events, _ = decode([b"event: ping\ndata: 1\n\ndata: 2\n\nevent:  spaced \ndata: 3\n\n"])

    assert events == [SSEEvent(b"1", "ping"), SSEEvent(b"2", None), SSEEvent(b"3", "spaced")]


def test_comments_and_unknown_fields_produce_no_events():
    events, decoder = decode([KEEPALIVE, b": another\n\nid: 1\nretry: 5\n\n"])

    assert events == []
    assert not decoder.pending


def test_pending_tells_whether_a_partial_event_is_buffered():
    decoder = SSEDecoder()
    assert not decoder.pending

    decoder.feed(b"data: par")
    assert decoder.pending  # a partial line

    decoder.feed(b"tial\n")
    assert decoder.pending  # a whole data line, but no blank line yet

    assert decoder.feed(b"\n") == [SSEEvent(b"partial")]
    assert not decoder.pending

    decoder.feed(b"\n\n\r\n")
    assert not decoder.pending  # blank lines alone carry nothing

    decoder.feed(b": comm")
    assert decoder.pending


def test_an_empty_chunk_changes_nothing():
    decoder = SSEDecoder()

    assert decoder.feed(b"") == []
    assert decoder.feed(b"data: x") == []
    assert decoder.feed(b"") == []
    assert decoder.feed(b"\n\n") == [SSEEvent(b"x")]


def test_done_constant_decodes_to_the_done_event():
    events, decoder = decode([DONE])

    assert events == [SSEEvent(b"[DONE]")]
    assert not decoder.pending


PAYLOADS = [
    {"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"content": "Hi"}}]},
    {"text": "line one\nline two\r\nline three\rend", "unicode": "h\u00e9llo \u2603 \U0001f600"},
    {"nested": {"list": [1, 2.5, None, True, False, "data: not a field"]}},
    ["a list", {"at": "top level"}],
    "a bare string with \n\n a blank line",
    None,
]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_encode_event_round_trips_through_the_decoder(payload):
    encoded = encode_event(payload)

    assert encoded.startswith(b"data: ")
    assert encoded.endswith(b"\n\n")
    assert encoded.count(b"\n") == 2  # JSON escapes every line end inside the payload
    assert b"\r" not in encoded
    events, decoder = decode(split_every(encoded, 3))
    assert len(events) == 1
    assert events[0].event is None
    assert orjson.loads(events[0].data) == payload
    assert not decoder.pending


def test_encoded_events_concatenate_into_a_stream():
    data = b"".join(encode_event(p) for p in PAYLOADS) + DONE

    events, _ = decode(split_every(data, 7))

    assert [orjson.loads(e.data) for e in events[:-1]] == PAYLOADS
    assert events[-1].data == b"[DONE]"


def test_ndjson_lines_come_whole_whatever_the_reads():
    stream = '{"a": "é"}\n\n{"b": 2}\n'.encode()
    for size in range(1, len(stream) + 1):
        decoder = NDJSONDecoder()
        lines: list[bytes] = []
        for start in range(0, len(stream), size):
            lines += decoder.feed(stream[start : start + size])

        assert lines == ['{"a": "é"}'.encode(), b'{"b": 2}']
        assert not decoder.pending


def test_ndjson_keeps_a_partial_line_pending():
    decoder = NDJSONDecoder()

    assert decoder.feed(b'{"done": tr') == []
    assert decoder.pending
