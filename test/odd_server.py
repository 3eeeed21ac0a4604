#!/usr/bin/env python3
"""An HTTP server that answers every request alike, in a way the Events API never does: for the tests of
what monk does with odd answers (a 200 page of a catch-all web server, a redirect, bytes that are not
UTF-8, JSON of the wrong shape, a cursor that repeats).

    odd_server.py PORT_FILE STATUS CONTENT_TYPE BODY_HEX [HEADER: VALUE ...]

It listens on 127.0.0.1 on a free port, writes the port to PORT_FILE, and answers each request with
STATUS, the given Content-Type and headers, and the body given in hexadecimal (any bytes)."""
import http.server
import socketserver
import sys


def main():
    port_file, status, content_type, body_hex = sys.argv[1:5]
    headers = [h.split(": ", 1) for h in sys.argv[5:]]
    body = bytes.fromhex(body_hex)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def answer(self):
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            self.send_response(int(status))
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = answer

        def log_message(self, *args):
            pass

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True
        allow_reuse_address = True

    server = Server(("127.0.0.1", 0), Handler)
    with open(port_file + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))
    import os
    os.rename(port_file + ".tmp", port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
