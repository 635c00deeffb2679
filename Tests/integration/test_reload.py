"""Hot reload: SIGHUP and file changes, including the ConfigMap symlink swap."""
import os
import signal
import socket

from conftest import EchoServer, Proxy, open_tunnel, read_head, recv_exactly, wait_for


def config(tenants):
    return "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\ntenants:\n" + tenants


def tenant(name, port, enabled=True, source=None):
    text = f"""  - name: {name}
    enabled: {"true" if enabled else "false"}
    allow: [{{cidr: 127.0.0.0/8, ports: [{port}]}}]
    allowPrivate: [127.0.0.0/8]
"""
    if source:
        text += f"    sources: [{source}]\n"
    return text


def reloads(proxy, result):
    return proxy.metrics()[f'egress_proxy_config_reloads_total{{result="{result}"}}']


def alive(sock, message=b"ping"):
    sock.sendall(message)
    return recv_exactly(sock, len(message)) == message


def test_good_reload_changes_new_tunnels_only(echo_server):
    other = EchoServer()
    proxy = Proxy(config(tenant("t", echo_server.port)))
    try:
        old, status, _ = open_tunnel(proxy.port, f"127.0.0.1:{echo_server.port}")
        assert " 200 " in status
        with open(proxy.config_path, "w") as f:
            f.write(config(tenant("t", other.port)))
        proxy.signal(signal.SIGHUP)
        wait_for(lambda: reloads(proxy, "success") >= 1, what="reload")
        assert alive(old), "the open tunnel keeps running under the old decision"
        refused, status, _ = open_tunnel(proxy.port, f"127.0.0.1:{echo_server.port}")
        assert " 403 " in status
        refused.close()
        fresh, status, _ = open_tunnel(proxy.port, f"127.0.0.1:{other.port}")
        assert " 200 " in status and alive(fresh)
        fresh.close()
        old.close()
    finally:
        proxy.stop()
        other.close()


def test_bad_reload_changes_nothing(echo_server):
    proxy = Proxy(config(tenant("t", echo_server.port)))
    try:
        # Files without a tenant (empty, comments only, or a write caught half-way) are bad
        # files: accepting one would cut every tunnel. So is a tenant named "unknown".
        for bad in ["tenants: [\n", "tenants:\n  - name: t\n    bogus: 1\n",
                    config(tenant("t", echo_server.port)) + "    credentials: {secretFile: /nonexistent/secret}\n",
                    "", "\n\n", "# only a comment\n", "listen: 127.0.0.1:0\n", "tenants: []\n",
                    config(tenant("t", echo_server.port))[:30], config(tenant("unknown", echo_server.port))]:
            before = reloads(proxy, "failure")
            with open(proxy.config_path, "w") as f:
                f.write(bad)
            proxy.signal(signal.SIGHUP)
            wait_for(lambda: reloads(proxy, "failure") > before, what="rejected reload")
            sock, status, _ = open_tunnel(proxy.port, f"127.0.0.1:{echo_server.port}")
            assert " 200 " in status and alive(sock)
            sock.close()
        assert reloads(proxy, "success") == 0
    finally:
        proxy.stop()


def test_configmap_symlink_swap_is_picked_up_without_a_signal(echo_server, tmp_path):
    other = EchoServer()
    # The layout a kubelet writes: config.yaml -> ..data/config.yaml, ..data -> ..<timestamp>
    mount = tmp_path / "config"
    mount.mkdir()
    first = mount / "..2026_11_26_00_00_00.000000001"
    first.mkdir()
    (first / "config.yaml").write_text(config(tenant("t", echo_server.port)))
    os.symlink(first.name, mount / "..data")
    os.symlink("..data/config.yaml", mount / "config.yaml")
    proxy = Proxy("# placeholder\n", extra_args=["--config", str(mount / "config.yaml")])
    try:
        sock, status, _ = open_tunnel(proxy.port, f"127.0.0.1:{echo_server.port}")
        assert " 200 " in status
        sock.close()
        second = mount / "..2026_11_26_00_01_00.000000002"
        second.mkdir()
        (second / "config.yaml").write_text(config(tenant("t", other.port)))
        os.symlink(second.name, mount / "..data_tmp")
        os.rename(mount / "..data_tmp", mount / "..data")
        wait_for(lambda: reloads(proxy, "success") == 1, what="reload after symlink swap")
        sock, status, _ = open_tunnel(proxy.port, f"127.0.0.1:{other.port}")
        assert " 200 " in status
        sock.close()
        sock, status, _ = open_tunnel(proxy.port, f"127.0.0.1:{echo_server.port}")
        assert " 403 " in status
        sock.close()
        # A touch without a content change is not a reload.
        os.utime(second / "config.yaml")
        sock, status, _ = open_tunnel(proxy.port, f"127.0.0.1:{other.port}")
        sock.close()
        assert reloads(proxy, "success") == 1
    finally:
        proxy.stop()
        other.close()


def test_disabled_and_removed_tenants_lose_their_tunnels(echo_server):
    tenants = tenant("keep", echo_server.port, source="127.0.0.1/32") + \
        tenant("off", echo_server.port, source="127.0.0.2/32") + \
        tenant("gone", echo_server.port, source="127.0.0.3/32")
    proxy = Proxy(config(tenants))
    try:
        keep, status, _ = open_tunnel(proxy.port, f"127.0.0.1:{echo_server.port}", host="127.0.0.1")
        assert " 200 " in status
        off = bind_and_tunnel(proxy, echo_server, "127.0.0.2")
        gone = bind_and_tunnel(proxy, echo_server, "127.0.0.3")
        with open(proxy.config_path, "w") as f:
            f.write(config(tenant("keep", echo_server.port, source="127.0.0.1/32") +
                           tenant("off", echo_server.port, enabled=False, source="127.0.0.2/32")))
        proxy.signal(signal.SIGHUP)
        wait_for(lambda: reloads(proxy, "success") == 1, what="reload")
        assert off.recv(1) == b"", "a disabled tenant's tunnel is closed"
        assert gone.recv(1) == b"", "a removed tenant's tunnel is closed"
        assert alive(keep), "other tenants are untouched"
        wait_for(lambda: len({r["tenant"] for r in proxy.records("tunnel")} & {"off", "gone"}) == 2, what="both audited")
        reasons = {r["tenant"]: r["reason"] for r in proxy.records("tunnel") if r["tenant"] in ("off", "gone")}
        assert reasons == {"off": "tenant_disabled", "gone": "tenant_removed"}
        refused = bind_and_tunnel(proxy, echo_server, "127.0.0.2", expect="403")
        refused.close()
        keep.close()
        off.close()
        gone.close()
    finally:
        proxy.stop()


def bind_and_tunnel(proxy, echo_server, source, expect="200"):
    sock = socket.socket()
    sock.settimeout(10)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", proxy.port))
    sock.sendall(f"CONNECT 127.0.0.1:{echo_server.port} HTTP/1.1\r\n\r\n".encode())
    head, _ = read_head(sock)
    assert f" {expect} ".encode() in head.split(b"\r\n")[0], head
    return sock
