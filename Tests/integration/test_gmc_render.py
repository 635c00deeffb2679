"""`gmc render` end to end: the example gateway renders to objects that pass
`kubernetes-validate --strict`; a rejected gateway prints its problems and exits 1."""
import os
import subprocess

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
GMC = os.environ.get("GMC_BIN") or os.path.join(ROOT, ".build", "debug", "gmc")
EXAMPLE = os.path.join(ROOT, "deploy", "examples", "tenant-team-a.yaml")


def test_rendered_objects_pass_kubernetes_validate_strict(tmp_path):
    rendered = subprocess.run([GMC, "render", "--file", EXAMPLE, "--allowed-priority-classes", "runner-critical,runner-standard",
                               "--api-server-cidrs", "10.96.0.1/32"], capture_output=True, text=True, check=True).stdout
    assert rendered.count("\n---\n") + 1 == 14
    out = tmp_path / "rendered.yaml"
    out.write_text(rendered)
    result = subprocess.run(["kubernetes-validate", "--strict", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == 14, result.stdout


def test_rejected_gateway_exits_1_with_problems():
    result = subprocess.run([GMC, "render", "--file", EXAMPLE], capture_output=True, text=True)
    assert result.returncode == 1
    assert "priorityTiers[0].priorityClassName" in result.stdout
    assert "not on the platform's allowed list" in result.stdout
