"""Real clients nobody here wrote, through the proxy, against `openssl s_server -www`."""
import subprocess

import requests

from conftest import wait_for


def test_curl_proxytunnel(proxy, s_server, tls_files):
    cert, _ = tls_files
    result = subprocess.run(
        ["curl", "-sS", "--fail", "-p", "-x", f"http://127.0.0.1:{proxy.port}", "--cacert", cert,
         f"https://localhost:{s_server}/"],
        capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "Ciphers supported in s_server binary" in result.stdout
    record = wait_for(lambda: proxy.find("tunnel", result="established"), what="audit line")
    assert record["destination"] == f"localhost:{s_server}"
    assert record["tenant"] == "team-a"
    assert record["bytes_up"] > 0 and record["bytes_down"] > 0


def test_python_requests_with_proxies(proxy, s_server, tls_files):
    cert, _ = tls_files
    proxies = {"https": f"http://127.0.0.1:{proxy.port}"}
    with requests.Session() as session:
        for _ in range(3):
            response = session.get(f"https://localhost:{s_server}/", proxies=proxies, verify=cert, timeout=10)
            assert response.status_code == 200
            assert "s_server" in response.text
    established = proxy.metrics()['egress_proxy_tunnels_total{tenant="team-a",result="established"}']
    assert established >= 1


def test_openssl_s_client_proxy(proxy, s_server, tls_files):
    cert, _ = tls_files
    result = subprocess.run(
        ["openssl", "s_client", "-proxy", f"127.0.0.1:{proxy.port}", "-connect", f"localhost:{s_server}",
         "-servername", "localhost", "-CAfile", cert, "-verify_return_error", "-quiet"],
        input="GET / HTTP/1.0\r\n\r\n", capture_output=True, text=True, timeout=30)
    assert "HTTP/1.0 200 ok" in result.stdout, result.stderr
