"""How answers leave the server: gathered bytes and file-backed parts, whole and in order,
on blocking sockets and on sockets with a timeout whose buffer fills."""

from __future__ import annotations

import gc
import os
import socket
import threading
import time

import pytest

from cerby_exporter.filebytes import FileBytes
from cerby_exporter.server import send_all


def test_a_file_backed_part_holds_its_bytes_and_closes_its_file_when_dropped() -> None:
    data = os.urandom(100_000)
    part = FileBytes(data)
    assert len(part) == len(data)
    assert part.data is data
    fd = part.fd
    assert fd is not None
    assert os.pread(fd, len(data) + 1, 0) == data
    del part
    gc.collect()
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(fd)


def receive_all(sock: socket.socket, size: int, pause: float = 0.0) -> bytes:
    received = bytearray()
    while len(received) < size:
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
        if pause:
            time.sleep(pause)
    return bytes(received)


@pytest.mark.parametrize("timeout", [None, 5.0])
def test_parts_arrive_whole_and_in_order(timeout: float | None) -> None:
    head, small, big, tail = b"HEAD\r\n\r\n", b"", os.urandom(3_000_000), os.urandom(5000)
    in_file = FileBytes(big)
    expected = head + big + tail + big[:10] + tail
    sender, receiver = socket.socketpair()
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # the buffer fills at once
    sender.settimeout(timeout)
    got: list[bytes] = []
    reader = threading.Thread(
        target=lambda: got.append(receive_all(receiver, len(expected), pause=0.001))
    )
    reader.start()
    try:
        send_all(sender, head, small, in_file, tail, FileBytes(big[:10]), tail)
    finally:
        reader.join(30)
        sender.close()
        receiver.close()
    assert got == [expected]


def test_a_reader_that_stops_reading_times_the_send_out() -> None:
    sender, receiver = socket.socketpair()
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sender.settimeout(0.3)
    try:
        with pytest.raises(TimeoutError):
            send_all(sender, b"head", FileBytes(os.urandom(5_000_000)))
    finally:
        sender.close()
        receiver.close()
