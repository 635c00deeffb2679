"""Admin endpoints, metrics validity, the graceful drain, and the CLI."""
import json
import signal
import socket
import subprocess
import time

from conftest import BIN, Proxy, open_tunnel, recv_exactly, tenant_config, wait_for


def test_health_ready_and_tunnels(proxy, echo_server):
    assert proxy.admin("/healthz")[0] == 200
    assert proxy.admin("/readyz")[0] == 200
    assert proxy.admin("/nope")[0] == 404
    sock, status, _ = open_tunnel(proxy.port, f"127.0.0.1:{echo_server.port}")
    sock.sendall(b"abc")
    assert recv_exactly(sock, 3) == b"abc"
    rows = wait_for(lambda: [r for r in json.loads(proxy.admin("/tunnels")[1]) if r["bytesUp"] == 3], what="tunnel row")
    assert rows[0]["tenant"] == "team-a"
    assert rows[0]["destination"] == f"127.0.0.1:{echo_server.port}"
    assert rows[0]["state"] == "relaying"
    sock.close()


def test_promtool_check_metrics_on_live_metrics(proxy, echo_server):
    sock, _, _ = open_tunnel(proxy.port, f"127.0.0.1:{echo_server.port}")
    sock.close()
    status, body = proxy.admin("/metrics")
    assert status == 200
    for name in ["egress_proxy_tunnels_active", "egress_proxy_tunnels_total", "egress_proxy_bytes_total",
                 "egress_proxy_connect_seconds_bucket", "egress_proxy_tunnel_seconds_count", "egress_proxy_denied_total",
                 "egress_proxy_draining", "egress_proxy_config_reloads_total", "egress_proxy_build_info",
                 "process_resident_memory_bytes", "process_open_fds", "process_max_fds", "process_cpu_seconds_total",
                 "process_start_time_seconds"]:
        assert f"\n{name}" in body, name
    result = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_sigterm_keeps_open_tunnel_working_and_readyz_503(echo_server):
    instance = Proxy(tenant_config(timeouts="{quiescence: 200ms, linger: 1s, drain: 30s}"))
    try:
        sock, status, _ = open_tunnel(instance.port, f"127.0.0.1:{echo_server.port}")
        assert status.endswith("200 Connection established")
        instance.signal(signal.SIGTERM)
        wait_for(lambda: instance.admin("/readyz")[0] == 503, what="readyz 503")
        assert instance.metrics()["egress_proxy_draining"] == 1
        # After quiescence the listener closes; the open tunnel keeps working.
        wait_for(lambda: instance.find("listeners closed"), what="listeners closed")
        for round_trip in range(5):
            message = f"still alive {round_trip}".encode()
            sock.sendall(message)
            assert recv_exactly(sock, len(message)) == message
        assert instance.process.poll() is None, "must not exit while a tunnel is open"
        try:
            refused = socket.create_connection(("127.0.0.1", instance.port), timeout=2)
            refused.close()
            raise AssertionError("listener still accepting after drain closed it")
        except ConnectionRefusedError:
            pass
        sock.close()
        wait_for(lambda: instance.process.poll() is not None, timeout=10, what="exit after last tunnel")
        assert instance.process.returncode == 0
    finally:
        instance.stop()


def test_sigterm_when_idle_exits_quickly():
    instance = Proxy(tenant_config())
    try:
        started = time.monotonic()
        instance.signal(signal.SIGTERM)
        wait_for(lambda: instance.process.poll() is not None, timeout=5, what="idle exit")
        assert instance.process.returncode == 0
        assert time.monotonic() - started < 5
    finally:
        instance.stop()


def test_drain_budget_force_closes(echo_server):
    instance = Proxy(tenant_config(timeouts="{quiescence: 100ms, linger: 200ms, drain: 500ms}"))
    try:
        sock, _, _ = open_tunnel(instance.port, f"127.0.0.1:{echo_server.port}")
        instance.signal(signal.SIGTERM)
        wait_for(lambda: instance.process.poll() is not None, timeout=10, what="forced exit")
        assert instance.process.returncode == 0
        assert sock.recv(1) == b""
        sock.close()
    finally:
        instance.stop()


def test_print_default_and_check_config(tmp_path):
    default = subprocess.run([BIN, "--print-default-config"], capture_output=True, text=True, check=True).stdout
    assert "listen: 127.0.0.1:3128" in default and "*.githubusercontent.com" in default
    path = tmp_path / "default.yaml"
    path.write_text(default)
    checked = subprocess.run([BIN, "--check-config", "--config", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0
    assert 'listen: "127.0.0.1:3128"' in checked.stdout
    flagged = subprocess.run([BIN, "--check-config", "--config", str(path), "--listen", "127.0.0.1:4000"],
                             capture_output=True, text=True)
    assert 'listen: "127.0.0.1:4000"' in flagged.stdout, "flags override the file"
    bad = tmp_path / "bad.yaml"
    bad.write_text("listen: 127.0.0.1:3128\ntimeouts:\n  dail: 5s\n")
    rejected = subprocess.run([BIN, "--check-config", "--config", str(bad)], capture_output=True, text=True)
    assert rejected.returncode == 1
    assert "line 3" in rejected.stdout and "timeouts.dail" in rejected.stdout
    env = subprocess.run([BIN, "--check-config"], capture_output=True, text=True,
                         env={"EGRESS_PROXY_CONFIG": str(bad), "PATH": "/usr/bin:/bin"})
    assert env.returncode == 1, "EGRESS_PROXY_CONFIG names the file"
    version = subprocess.run([BIN, "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.strip()


def test_sighup_reload_applies_new_policy_and_rejects_bad_files(echo_server):
    instance = Proxy(tenant_config())
    try:
        sock, status, _ = open_tunnel(instance.port, f"127.0.0.1:{echo_server.port}")
        assert status.endswith("200 Connection established")
        sock.close()
        with open(instance.config_path, "w") as f:
            f.write("tenants: [\n")
        instance.signal(signal.SIGHUP)
        wait_for(lambda: instance.metrics()['egress_proxy_config_reloads_total{result="failure"}'] == 1, what="failed reload")
        sock, status, _ = open_tunnel(instance.port, f"127.0.0.1:{echo_server.port}")
        assert status.endswith("200 Connection established"), "a bad file changes nothing"
        sock.close()
        with open(instance.config_path, "w") as f:
            f.write(tenant_config(allow_loopback=False))
        instance.signal(signal.SIGHUP)
        wait_for(lambda: instance.metrics()['egress_proxy_config_reloads_total{result="success"}'] == 1, what="reload")
        sock, status, _ = open_tunnel(instance.port, f"127.0.0.1:{echo_server.port}")
        assert "403" in status
        sock.close()
    finally:
        instance.stop()
