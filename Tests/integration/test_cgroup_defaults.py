"""Defaults that fit the container (spec/egress-proxy.md section 3, `loops: 0`): the proxy reads its
cgroup's CPU quota and memory limit, here from a cgroup tree the test writes and points it at
(`--cgroup-root`, `--cgroup-self`), as it would read /sys/fs/cgroup in a pod. Over the memory
budget new clients get 503 `memory_limit` instead of the process growing into an OOM kill."""
import socket

from conftest import EchoServer, Proxy, open_tunnel, tenant_config, wait_for


def cgroup_tree(tmp_path, cpu_max, memory_max):
    (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    (tmp_path / "memory.max").write_text(memory_max + "\n")
    (tmp_path / "self").write_text("0::/\n")
    return ["--cgroup-root", str(tmp_path), "--cgroup-self", str(tmp_path / "self")]


def test_loops_zero_follows_the_cpu_quota_and_the_limit_is_logged(tmp_path):
    import os
    assert len(os.sched_getaffinity(0)) >= 2, "the machine has 2 CPUs or more: a quota of half of one must lower the loops"
    proxy = Proxy(tenant_config(), extra_args=cgroup_tree(tmp_path, "50000 100000", str(512 << 20)), loops=0)
    try:
        started = proxy.find("listening")
        assert started["loops"] == 1, "half a CPU of quota: 1 loop, whatever the node has"
        assert started["cgroupMemoryBytes"] == str(512 << 20)
        # (512 MiB / 2 - 48 MiB) / 2 for buffers, on 1 loop, in 32 KiB buffers.
        assert started["buffersPerLoop"] == str(((512 << 20) // 2 - (48 << 20)) // 2 // (32 << 10))
    finally:
        proxy.stop()
    unlimited = Proxy(tenant_config(), extra_args=cgroup_tree(tmp_path, "max 100000", "max"), loops=0)
    try:
        started = unlimited.find("listening")
        assert started["buffersPerLoop"] == "unlimited" and started["loops"] == len(os.sched_getaffinity(0))
    finally:
        unlimited.stop()


def test_past_the_memory_budget_new_clients_get_503_and_room_comes_back(tmp_path):
    # 64 MiB leaves the minimum: 8 buffers on the one loop. Buffers only (no splice), so every
    # stuck direction holds exactly one.
    config = tenant_config().replace("tenants:", "splice: false\ntenants:")
    proxy = Proxy(config, extra_args=cgroup_tree(tmp_path, "100000 100000", str(64 << 20)), loops=0)
    sink = socket.socket()
    sink.bind(("127.0.0.1", 0))
    sink.listen(4096)  # accepts (the kernel does) and never reads: what is sent to it stays in flight
    stuck = []
    try:
        assert proxy.find("listening")["buffersPerLoop"] == "8"

        def attempt():
            sock, status, _ = open_tunnel(proxy.port, f"127.0.0.1:{sink.getsockname()[1]}")
            if status != "HTTP/1.1 200 Connection established":
                sock.close()
                return status
            # Fill the path to the sink until the proxy holds this direction's bytes in a buffer.
            sock.setblocking(False)
            try:
                while True:
                    sock.send(b"x" * 65536)
            except BlockingIOError:
                pass
            stuck.append(sock)
            return status

        refused = wait_for(lambda: (status := attempt()) != "HTTP/1.1 200 Connection established" and status, timeout=60,
                           what="a refusal once the buffers are taken")
        assert refused == "HTTP/1.1 503 Service Unavailable"
        # Not before 8 buffers are held; how many tunnels that takes depends on when each one's
        # path to the sink is full (kernel socket buffers), so only a bound is checked.
        assert 8 <= len(stuck) <= 200, len(stuck)
        record = wait_for(lambda: proxy.find("tunnel", reason="memory_limit"), what="the audit line")
        assert record["result"] == "over_limit" and record["status"] == 503
        # The sink goes away (its queued connections are reset), so the stuck tunnels fail and
        # their buffers come back: room again.
        sink.close()
        for sock in stuck:
            sock.close()
        stuck.clear()
        wait_for(lambda: proxy.metrics()['egress_proxy_tunnels_active{tenant="team-a"}'] == 0, timeout=20, what="stuck tunnels closed")
        echo = EchoServer()
        try:
            sock, status, _ = open_tunnel(proxy.port, f"127.0.0.1:{echo.port}")
            assert status == "HTTP/1.1 200 Connection established"
            sock.sendall(b"ping")
            assert sock.recv(4) == b"ping"
            sock.close()
        finally:
            echo.close()
    finally:
        for sock in stuck:
            sock.close()
        sink.close()
        proxy.stop()
