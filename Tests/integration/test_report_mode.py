"""A tenant in `mode: report` (spec/egress-proxy.md section 3): what its allowlist does not admit is
let through, and logged (`reported` in the audit line) and counted
(egress_proxy_report_only_total) as what enforce would have refused. The SSRF deny ranges and the
kill switch hold in both modes. A real client (curl) fetches through the proxy."""
import http.server
import subprocess
import threading

import pytest

import conftest
from conftest import Proxy, wait_for


@pytest.fixture
def web():
    """A loopback HTTP server that answers every GET with 'hello' (the destination)."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "5")
            self.end_headers()
            self.wfile.write(b"hello")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def config(mode, allow, allow_private=True):
    private = '\n    allowPrivate: [127.0.0.0/8, "::1/128"]' if allow_private else ""
    return f"""listen: 127.0.0.1:0
admin: 127.0.0.1:0
tenants:
  - name: team-a
    mode: {mode}
    allow: {allow}{private}
"""


def curl(proxy, url):
    """curl through the proxy with a CONNECT tunnel even for http:// (-p), as a runner's client would."""
    return subprocess.run(["curl", "-sv", "-p", "--max-time", "10", "-x", f"http://127.0.0.1:{proxy.port}", url],
                          capture_output=True, text=True)


def series(proxy, name, **labels):
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return proxy.metrics().get(f"{name}{{{wanted}}}", 0)


@pytest.mark.parametrize("allow, target, reason", [
    ("[{host: allowed.example}]", "127.0.0.1:{port}", "not_allowed"),       # no rule for the address
    ("[{host: localhost, ports: [443]}]", "localhost:{port}", "port_not_allowed"),  # the host, another port
    ('[{cidr: "10.0.0.0/8", ports: ["*"]}]', "localhost:{port}", "not_allowed"),  # resolves outside the cidr
])
def test_report_mode_lets_through_and_counts_what_enforce_refuses(web, allow, target, reason):
    url = "http://" + target.format(port=web) + "/"
    reporting = Proxy(config("report", allow))
    try:
        result = curl(reporting, url)
        assert result.returncode == 0 and result.stdout == "hello", result.stderr
        record = wait_for(lambda: reporting.find("tunnel", result="established"), what="the audit line")
        assert record["reported"] == reason and record["status"] == 200, record
        assert series(reporting, "egress_proxy_report_only_total", tenant="team-a", reason=reason) == 1
        assert series(reporting, "egress_proxy_denied_total", tenant="team-a", reason=reason) == 0
    finally:
        reporting.stop()
    enforcing = Proxy(config("enforce", allow))
    try:
        result = curl(enforcing, url)
        assert result.returncode != 0 and "< HTTP/1.1 403 Forbidden" in result.stderr, result.stderr
        assert f"< X-Egress-Proxy-Error: {reason}" in result.stderr
        assert series(enforcing, "egress_proxy_denied_total", tenant="team-a", reason=reason) == 1
        assert series(enforcing, "egress_proxy_report_only_total", tenant="team-a", reason=reason) == 0
    finally:
        enforcing.stop()


def test_report_mode_keeps_the_ssrf_deny_ranges_and_a_plain_allowed_tunnel_reports_nothing(web):
    proxy = Proxy(config("report", "[{host: allowed.example}]", allow_private=False))
    try:
        result = curl(proxy, f"http://127.0.0.1:{web}/")
        assert result.returncode != 0 and "< X-Egress-Proxy-Error: private_address" in result.stderr, result.stderr
        assert series(proxy, "egress_proxy_denied_total", tenant="team-a", reason="private_address") == 1
    finally:
        proxy.stop()
    allowed = Proxy(config("report", '[{cidr: "127.0.0.0/8", ports: ["*"]}]'))
    try:
        assert curl(allowed, f"http://127.0.0.1:{web}/").stdout == "hello"
        record = wait_for(lambda: allowed.find("tunnel", result="established"), what="the audit line")
        assert "reported" not in record
        assert series(allowed, "egress_proxy_report_only_total", tenant="team-a", reason="not_allowed") == 0
    finally:
        allowed.stop()


def test_a_bad_mode_is_refused_with_its_key(tmp_path):
    path = tmp_path / "proxy.yaml"
    path.write_text(config("audit", "[]"))
    result = subprocess.run([conftest.BIN, "--check-config", "--config", str(path)], capture_output=True, text=True)
    assert result.returncode != 0
    assert "tenants[0].mode" in result.stderr and "enforce or report" in result.stderr, result.stderr
