"""The container images (issue 19): deploy/images/build.sh (what `make images` runs) builds
every image of images.list with buildah into a storage of the test's own. Starting containers is
refused on these machines, so each image's root filesystem is mounted and its programs run there
under chroot, as the image's user, in a mount namespace of their own with /proc (the Swift
runtime reads its arguments there, as every container has it). The worker is built on a
stand-in runner image (busybox and a fake run.sh): the official one cannot be pulled here, and a
base with no libraries at all shows the agc bundle needs none of its base's.

By default the images hold the debug binaries `make test` built (IMAGES_BIN_DIR=... for others,
e.g. .build/static/release after `make images`): the packaging is the same, the sizes printed
are theirs."""
import base64
import json
import os
import re
import shutil
import stat
import subprocess
import urllib.request

import pytest
import yaml

from conftest import wait_for

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
IMAGES = os.path.join(ROOT, "deploy", "images")
BIN = os.environ.get("IMAGES_BIN_DIR") or os.path.join(ROOT, ".build", "debug")
EXAMPLE = os.path.join(ROOT, "deploy", "examples", "tenant-team-a.yaml")
CLASSES = "--allowed-priority-classes=runner-critical,runner-standard"
FAKE_BASE = "localhost/stand-in-actions-runner:test"
RUNNER_UID = 1001
HOST = {tool: shutil.which(tool) for tool in ("unshare", "mount", "chroot", "bash")}


def image_list():
    """images.list as {name: (tag, user, entrypoint)}."""
    images = {}
    for line in open(os.path.join(IMAGES, "images.list")):
        if line.strip() and not line.startswith("#"):
            name, tag, user, *entrypoint = line.split()
            images[name] = (tag, user, entrypoint)
    return images


LIST = image_list()


class Buildah:
    def __init__(self, root):
        self.root = root
        self.base = ["buildah", "--storage-driver", "vfs", "--root", f"{root}/storage", "--runroot", f"{root}/run"]

    def __call__(self, *args):
        return subprocess.run(self.base + list(args), check=True, capture_output=True, text=True).stdout.strip()


def stand_in_runner(buildah, tmp):
    """FROM scratch: a static busybox as /bin/sh, the user `runner` (1001), and run.sh and
    bin/Runner.Worker that write what they were given to $FAKE_RUNNER_REPORT."""
    rootfs = tmp / "stand-in"
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "etc").mkdir()
    shutil.copy("/bin/busybox", rootfs / "bin" / "busybox")
    os.symlink("busybox", rootfs / "bin" / "sh")
    (rootfs / "etc" / "passwd").write_text(f"root:x:0:0::/root:/bin/sh\nrunner:x:{RUNNER_UID}:{RUNNER_UID}::/home/runner:/bin/sh\n")
    (rootfs / "etc" / "group").write_text(f"root:x:0:\nrunner:x:{RUNNER_UID}:\n")
    home = tmp / "stand-in-home"
    (home / "bin").mkdir(parents=True)
    script = ('#!/bin/sh\n{ echo "argv=$*"; echo "cwd=$(pwd)"; echo "runner_mode=$(/bin/busybox stat -c %a .runner)"; '
              'echo "uid=$(/bin/busybox id -u)"; } > "$FAKE_RUNNER_REPORT"\n')
    for path in (home / "run.sh", home / "bin" / "Runner.Worker"):
        path.write_text(script)
        path.chmod(0o755)
    container = buildah("from", "--quiet", "scratch")
    buildah("copy", "--quiet", container, str(rootfs), "/")
    buildah("copy", "--quiet", "--chown", f"{RUNNER_UID}:{RUNNER_UID}", container, str(home), "/home/runner")
    buildah("config", "--user", "runner", container)
    buildah("commit", "--quiet", "--rm", container, FAKE_BASE)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("images")
    buildah = Buildah(str(tmp / "buildah"))
    stand_in_runner(buildah, tmp)
    env = dict(os.environ, BIN_DIR=BIN, WORKER_BASE=FAKE_BASE, BUILDAH_ROOT=buildah.root)
    out = subprocess.run(["bash", os.path.join(IMAGES, "build.sh")], env=env, check=True, capture_output=True, text=True).stdout
    sizes = {line.split()[1]: (int(line.split()[3]), int(line.split()[4])) for line in out.splitlines() if line.startswith("image ")}
    yield buildah, sizes
    subprocess.run(buildah.base + ["rm", "--all"], capture_output=True)
    subprocess.run(buildah.base + ["rmi", "--all", "--force"], capture_output=True)
    shutil.rmtree(tmp, ignore_errors=True)


class Mounted:
    """A working container of an image, its root filesystem mounted; removed on exit."""

    def __init__(self, buildah, image):
        self.buildah = buildah
        self.container = buildah("from", "--quiet", image)
        self.path = buildah("mount", self.container)
        os.makedirs(os.path.join(self.path, "proc"), exist_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, *_):
        subprocess.run(self.buildah.base + ["rm", self.container], capture_output=True)

    def put(self, path, text, mode=0o644, owner=None):
        full = os.path.join(self.path, path.lstrip("/"))
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "w") as f:
            f.write(text)
        os.chmod(full, mode)
        if owner is not None:
            os.chown(full, owner, owner)
            os.chown(os.path.dirname(full), owner, owner)

    def command(self, argv, user):
        """The host's tools by absolute path: the environment given is the chrooted program's."""
        script = f'{HOST["mount"]} -t proc proc "$0/proc" && exec {HOST["chroot"]} --userspec="$1" "$0" "${{@:2}}"'
        return [HOST["unshare"], "--mount", "--propagation", "private", HOST["bash"], "-c", script, self.path, user, *argv]

    def run(self, argv, user="65532:65532", env=None, timeout=60):
        return subprocess.run(self.command(argv, user), env=env or {"PATH": "/usr/local/bin"}, capture_output=True, text=True,
                              timeout=timeout)


def render():
    return subprocess.run([os.path.join(BIN, "gmc"), "render", "--file", EXAMPLE, CLASSES], check=True, capture_output=True,
                          text=True).stdout


def config_of(buildah, tag):
    inspected = json.loads(subprocess.run(buildah.base + ["inspect", "--type", "image", tag], check=True, capture_output=True,
                                          text=True).stdout)
    return inspected["OCIv1"]["config"]


def test_every_image_has_its_listed_user_and_entrypoint_and_no_shell(built, capsys):
    buildah, sizes = built
    assert set(sizes) == set(LIST), "build.sh built every image of the list"
    for name, (tag, user, entrypoint) in LIST.items():
        config = config_of(buildah, tag)
        assert config.get("User") == user and user.split(":")[0] not in ("", "0", "root"), (name, config)
        assert config.get("Entrypoint") == entrypoint, (name, config)
        assert not config.get("Cmd"), f"{name}: no CMD appended to the entrypoint"
        with Mounted(buildah, tag) as image:
            files = [os.path.relpath(os.path.join(d, f), image.path) for d, _, fs in os.walk(image.path) for f in fs]
            for path in files:
                mode = os.lstat(os.path.join(image.path, path)).st_mode
                if stat.S_ISLNK(mode):
                    continue  # a link's own mode means nothing
                assert not mode & 0o6000 and not mode & 0o002, f"{name}: {path} is setuid or world-writable"
            if name == "worker":
                assert "bin/busybox" in files and "opt/actions-gateway/lib/libc.so.6" in files, "the bundle on top of its base"
                continue
            binary = os.path.basename(entrypoint[0])
            assert [f for f in files if "/bin/" in f"/{f}"] == [f"usr/local/bin/{binary}"], f"{name}: no other program, no shell"
            assert "etc/ssl/certs/ca-certificates.crt" in files and "etc/passwd" in files
    with capsys.disabled():
        print("\nimage sizes (bytes on disk / gzip'd layer; the worker's without its base):")
        for name, (size, gzipped) in sorted(sizes.items()):
            print(f"  {name:13} {size / 1e6:7.1f} MB  {gzipped / 1e6:6.1f} MB")


def test_the_dockerfiles_build_what_the_list_says():
    dockerfiles = {f[len("Dockerfile."):] for f in os.listdir(IMAGES) if f.startswith("Dockerfile.")}
    assert dockerfiles == set(LIST)
    for name, (tag, user, entrypoint) in LIST.items():
        text = open(os.path.join(IMAGES, f"Dockerfile.{name}")).read()
        final = text[text.rindex("\nFROM "):]
        assert re.search(rf"^USER {re.escape(user)}$", final, re.MULTILINE), name
        assert json.loads(re.search(r"^ENTRYPOINT (.*)$", final, re.MULTILINE).group(1)) == entrypoint, name
        if name == "worker":
            assert "COPY --from=agc /opt/actions-gateway /opt/actions-gateway" in final
            assert "COPY --from=agc /usr/local/bin/agc /usr/local/bin/agc" in final
        else:
            assert final.startswith("\nFROM scratch\n") and "COPY --from=build /out/rootfs/ /" in final
            assert f"sh deploy/images/rootfs.sh .build/static/release/{name} /out/rootfs" in text


def test_the_tags_are_those_deploy_names():
    rendered = list(yaml.safe_load_all(render()))
    deployments = {d["metadata"]["name"]: d for d in rendered if d and d["kind"] == "Deployment"}
    proxy = deployments["team-a-gateway-proxy"]["spec"]["template"]["spec"]["containers"][0]
    agc = deployments["team-a-gateway-agc"]["spec"]["template"]["spec"]["containers"][0]
    assert proxy["image"] == LIST["egress-proxy"][0]
    assert agc["image"] == LIST["agc"][0]
    assert agc["args"][agc["args"].index("--worker-image") + 1] == LIST["worker"][0]
    for path, name in (("deploy/gmc/deployment.yaml", "gmc"), ("deploy/proxy/proxy.yaml", "egress-proxy")):
        assert f"image: {LIST[name][0]}" in open(os.path.join(ROOT, path)).read(), path


def test_the_proxy_image_checks_the_config_the_gmc_renders_and_serves(built):
    buildah, _ = built
    config = next(d for d in yaml.safe_load_all(render()) if d and d["kind"] == "ConfigMap" and "config.yaml" in (d.get("data") or {}))
    with Mounted(buildah, LIST["egress-proxy"][0]) as image:
        image.put("/etc/egress-proxy/config.yaml", config["data"]["config.yaml"])
        checked = image.run(["egress-proxy", "--check-config", "--config", "/etc/egress-proxy/config.yaml"])
        assert checked.returncode == 0, checked.stderr
        assert "tenants:" in checked.stdout, "the effective config printed"
        process = subprocess.Popen(image.command(["egress-proxy", "--config", "/etc/egress-proxy/config.yaml", "--listen", "127.0.0.1:0",
                                                  "--admin", "127.0.0.1:0"], "65532:65532"),
                                   env={"PATH": "/usr/local/bin"}, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        try:
            started = None
            for line in process.stderr:
                record = json.loads(line) if line.startswith("{") else {}
                if record.get("msg") == "listening":
                    started = record
                    break
            assert started, "the proxy said where it listens"
            admin = started["admin"]
            wait_for(lambda: urllib.request.urlopen(f"http://{admin}/readyz", timeout=2).status == 200, timeout=10, what="/readyz")
            with open(f"/proc/{process.pid}/status") as status:
                assert re.search(r"^Uid:\s+65532\s", status.read(), re.MULTILINE), "runs as 65532"
        finally:
            process.terminate()
            assert process.wait(timeout=30) == 0, "a graceful drain on SIGTERM"


def test_the_gmc_image_renders_the_example_gateway_as_the_build_does(built):
    buildah, _ = built
    with Mounted(buildah, LIST["gmc"][0]) as image:
        image.put("/work/gateway.yaml", open(EXAMPLE).read())
        rendered = image.run(["gmc", "render", "--file", "/work/gateway.yaml", CLASSES])
        assert rendered.returncode == 0, rendered.stderr
        assert rendered.stdout == render()


def test_the_agc_image_renders_a_worker_pod(built):
    buildah, _ = built
    args = ["render-pod", "--file", "/work/gateway.yaml", "--group", "cpu-runners"]
    host = subprocess.run([os.path.join(BIN, "agc"), *[a.replace("/work/gateway.yaml", EXAMPLE) for a in args]], check=True,
                          capture_output=True, text=True).stdout
    with Mounted(buildah, LIST["agc"][0]) as image:
        image.put("/work/gateway.yaml", open(EXAMPLE).read())
        rendered = image.run(["agc", *args])
        assert rendered.returncode == 0, rendered.stderr
        assert rendered.stdout == host and "kind: Pod" in host


def test_the_worker_image_runs_agc_worker_and_the_runner_as_its_user(built):
    buildah, _ = built
    files = {".runner": '{"agentId": 7}', ".credentials": '{"scheme": "OAuth"}', ".credentials_rsaparams": '{"modulus": "AQAB"}'}
    blob = base64.b64encode(json.dumps({k: base64.b64encode(v.encode()).decode() for k, v in files.items()}).encode()).decode()
    with Mounted(buildah, LIST["worker"][0]) as image:
        image.put("/run/secrets/actions-gateway/jitconfig", blob, mode=0o400, owner=RUNNER_UID)
        env = {"PATH": "/usr/local/bin:/bin", "RUNNER_HOME": "/home/runner", "AGC_WORKER_MODE": "scaleset",
               "FAKE_RUNNER_REPORT": "/home/runner/report"}
        ran = image.run(["agc", "worker"], user=f"{RUNNER_UID}:{RUNNER_UID}", env=env)
        assert ran.returncode == 0, ran.stderr
        report = dict(line.split("=", 1) for line in open(os.path.join(image.path, "home/runner/report")).read().splitlines())
        assert report == {"argv": f"--jitconfig {blob}", "cwd": "/home/runner", "runner_mode": "600", "uid": str(RUNNER_UID)}
