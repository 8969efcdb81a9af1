"""Our Redis connections pack every command exactly as redis-py's own connection does."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio.connection import Connection
from redis.exceptions import DataError

from service.clients import _TcpConnection


@pytest.mark.parametrize(
    "args",
    [
        ("EVALSHA", "a" * 40, 2, "{q}:stream", "{q}:sent:0f", "workers", "1-0", 86_400_000, 0),
        ("XADD", "{q}:stream", "*", "v", b"1", "task", b'{"to":["a@example.com"]}'),
        ("SET", "k", "Grüße, 中文", -5, 2**70, 0.1, 1e20, float("inf")),
        ("SET", "k", b"\x00\xff" * 5000),  # above redis-py's chunking size
        ("SET", "k", memoryview(b"view")),
        ("SET", "k", bytearray(b"array")),  # hiredis refuses it: redis-py packs it
        ("SCRIPT LOAD", "return 1"),  # two words: redis-py splits them
        (b"GET", "k"),
        ("GET", ""),
    ],
)
def test_commands_are_packed_as_redis_py_packs_them(args: tuple[Any, ...]) -> None:
    ours = b"".join(_TcpConnection().pack_command(*args))
    assert ours == b"".join(Connection().pack_command(*args))


@pytest.mark.parametrize("value", [True, None, object()])
def test_a_value_redis_py_refuses_is_refused_with_its_error(value: object) -> None:
    with pytest.raises(DataError):
        _TcpConnection().pack_command("SET", "k", value)
