#!/usr/bin/env python3
"""A Kubernetes node stand-in for the lab: answers every request on the
service port with the node's name (what kube-proxy would deliver to a pod on
it), and serves kube-proxy's health endpoint (/healthz, 200) on the health
port. Usage: node_http.py NAME ADDRESS SERVICE_PORT HEALTH_PORT"""
import http.server
import socket
import sys
import threading


def handler(body_for):
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            status, body = body_for(self.path)
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    return H


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # A node's real listener has a backlog in the hundreds, not
    # socketserver's 5.
    request_queue_size = 256


def serve(addr, port, body_for):
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    Server.address_family = family
    srv = Server((addr, port), handler(body_for))
    srv.serve_forever()


def main():
    name, addr, port, health = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    threading.Thread(
        target=serve, args=("::", health, lambda p: (200, "ok\n") if p == "/healthz" else (404, "")), daemon=True
    ).start()
    serve("::", port, lambda p: (200, name + "\n"))


if __name__ == "__main__":
    main()
