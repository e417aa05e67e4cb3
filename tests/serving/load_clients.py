"""Clients that load a server until stopped, and the check of a stop under load: every request the
server read was answered (as many answers received as it says it gave, all 200)."""

import http.client
import json
import threading
import time


class Load:
    """`clients` threads sending requests, each on a fresh connection, until stopped: every outcome is
    a status code, "refused" (at connect: nothing listens) or "reset" (the connection dropped)."""

    def __init__(self, url: str, clients: int = 8):
        self.host, port = url.removeprefix("http://").split(":")
        self.port, self.outcomes, self.stopping = int(port), [], threading.Event()
        self.body = json.dumps({"history": ["1", "2", "3"], "k": 10})
        self.threads = [threading.Thread(target=self.client) for _ in range(clients)]
        for thread in self.threads:
            thread.start()

    def client(self):
        while not self.stopping.is_set():
            connection = http.client.HTTPConnection(self.host, self.port, timeout=60)
            try:
                connection.connect()
            except OSError:
                self.outcomes.append("refused")
                time.sleep(0.05)
                continue
            try:
                connection.request("POST", "/recommend", self.body, {"Content-Type": "application/json"})
                response = connection.getresponse()
                response.read()
                self.outcomes.append(response.status)
            except OSError:
                self.outcomes.append("reset")
            finally:
                connection.close()

    def stop(self) -> list:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=60)
        return self.outcomes


def assert_every_request_read_was_answered(out: str, outcomes: list) -> None:
    """`out`: the server's output, ending "stopped: N recommendation requests answered"; `outcomes`:
    the clients' (Load.stop). The others were refused at connect once it stopped listening."""
    (last,) = [line for line in out.splitlines() if line.endswith(" recommendation requests answered")]
    said_answered = int(last.split()[1])
    received = [outcome for outcome in outcomes if isinstance(outcome, int)]
    assert said_answered > 20 and len(received) == said_answered, (said_answered, len(received))
    assert set(received) == {200}, sorted(set(received))
    assert outcomes.count("refused") > 0, sorted(map(str, outcomes))
