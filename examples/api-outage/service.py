#!/usr/bin/env python3
"""A tiny HTTP service on loopback for the api-outage example.

    service.py STATE_DIR NAME [--fault]

Binds 127.0.0.1 on a free port and writes it to STATE_DIR/NAME.port and its
pid to STATE_DIR/NAME.pid. With --fault every request answers 503 (the
injected fault) until the process is restarted without it. Also writes a line
to STATE_DIR/NAME.starts on every start, so tests can count restarts.
"""
import http.server
import os
import sys


def main():
    state, name = sys.argv[1], sys.argv[2]
    fault = "--fault" in sys.argv[3:]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            code = 503 if fault else 200
            body = b"fault injected\n" if fault else b"ok\n"
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    port = server.server_address[1]
    with open(os.path.join(state, name + ".starts"), "a") as f:
        f.write("fault\n" if fault else "healthy\n")
    with open(os.path.join(state, name + ".pid.tmp"), "w") as f:
        f.write(str(os.getpid()))
    os.replace(os.path.join(state, name + ".pid.tmp"), os.path.join(state, name + ".pid"))
    with open(os.path.join(state, name + ".port.tmp"), "w") as f:
        f.write(str(port))
    os.replace(os.path.join(state, name + ".port.tmp"), os.path.join(state, name + ".port"))
    server.serve_forever()


if __name__ == "__main__":
    main()
