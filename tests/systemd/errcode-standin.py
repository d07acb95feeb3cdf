#!/usr/bin/env python3
"""A stand-in for WeChat's API that refuses every request with one errcode (default 40164,
"invalid ip, not in whitelist"), as WeChat does when the refresher's IP is not allowed.
Listens on 127.0.0.1 only, prints its base URL on one line, and exits when its stdin
closes (the caller holds a pipe open), so it never outlives tests/systemd/run.sh.

    python3 errcode-standin.py [ERRCODE]
"""
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ERRCODE = int(sys.argv[1]) if len(sys.argv) > 1 else 40164


class Handler(BaseHTTPRequestHandler):
    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = json.dumps(
            {
                "errcode": ERRCODE,
                "errmsg": "invalid ip 127.0.0.1 ipv6 ::ffff:127.0.0.1, not in whitelist rid: 0",
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json; encoding=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = answer
    do_POST = answer

    def log_message(self, fmt, *args):
        sys.stderr.write("errcode-standin: %s %s\n" % (self.command, self.path.split("?")[0]))


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
threading.Thread(target=server.serve_forever, daemon=True).start()
print("http://127.0.0.1:%d" % server.server_address[1], flush=True)
sys.stdin.read()
server.shutdown()
