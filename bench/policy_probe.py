"""The second client of bench/policy.sh: sequential keep-alive GETs from a
given source address for a given time, paced below the rate limit.

    python3 bench/policy_probe.py SRC_IP EDGE_HOST:PORT HOST_HEADER SECONDS [PER_SEC]

Prints one line: requests, non-2xx answers, p50 ms, p99 ms.
"""

import http.client
import socket
import sys
import time


def main():
    src, edge, host, secs = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    per_sec = float(sys.argv[5]) if len(sys.argv) > 5 else 50.0
    ehost, eport = edge.rsplit(":", 1)
    conn = http.client.HTTPConnection(ehost, int(eport), timeout=10, source_address=(src, 0))
    conn.connect()
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    lat, bad = [], 0
    end = time.monotonic() + secs
    gap = 1.0 / per_sec
    nxt = time.monotonic()
    while time.monotonic() < end:
        t0 = time.perf_counter()
        conn.request("GET", "/", headers={"Host": host})
        r = conn.getresponse()
        r.read()
        lat.append((time.perf_counter() - t0) * 1000)
        if not 200 <= r.status < 300:
            bad += 1
        nxt += gap
        pause = nxt - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    lat.sort()
    pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
    print(f"{len(lat)} {bad} {pick(0.50):.2f} {pick(0.99):.2f}")


if __name__ == "__main__":
    main()
