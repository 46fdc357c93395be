"""A network backend for device tests: frames over a socketpair."""


class SocketLink:
    """A NetBackend over one end of a SOCK_DGRAM socketpair (each datagram is a frame)."""

    def __init__(self, sock):
        self.sock = sock
        sock.setblocking(False)
        self.receiver = None

    def send(self, frame):
        self.sock.send(frame)

    def recv(self):
        try:
            return self.sock.recv(65536)
        except BlockingIOError:
            return None

    def fileno(self):
        return self.sock.fileno()

    def set_receiver(self, cb):
        self.receiver = cb

    def close(self):
        self.sock.close()
