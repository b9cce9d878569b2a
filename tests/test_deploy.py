"""What can be checked of the container image and the Kubernetes manifests without Docker or a
cluster: the Dockerfile installs bertkit with the extras pyproject.toml defines, and every manifest
names that image and mounts the paths its commands read and write."""

import re
import tomllib

import pytest
import yaml

from conftest import REPO

IMAGE = "bertkit:latest"
MANIFESTS = sorted((REPO / "deploy" / "kubernetes").glob("*job-*.yaml"))


def test_dockerfile_installs_every_extra_on_a_pytorch_cuda_runtime_image():
    text = (REPO / "Dockerfile").read_text()
    base = re.search(r"^ARG BASE=(\S+)", text, re.M).group(1)
    assert re.fullmatch(r"pytorch/pytorch:[\d.]+-cuda12\.\d+-cudnn9-runtime", base), base
    installs = re.findall(r"pip install \S*\[([\w,]+)\]", text)
    assert len(installs) == 1, installs
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert sorted(installs[0].split(",")) == sorted(extras)
    assert re.search(r"^USER (?!root|0\b)\w+", text, re.M), "the image must end on a non-root user"
    volumes = set(re.findall(r'"(/[^"]+)"', re.search(r"^VOLUME \[(.*)\]", text, re.M).group(1)))
    assert volumes == {"/software/data/tf/data", "/root/tmp", "/root/hlogs"}


def pods(doc: dict) -> dict[str, dict]:
    specs = doc["spec"].get("pytorchReplicaSpecs") or doc["spec"]["mpiReplicaSpecs"]
    return {role: spec["template"]["spec"] for role, spec in specs.items()}


def mounted(pod: dict, path: str) -> bool:
    return any(path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")
               for c in pod["containers"] for m in c.get("volumeMounts", []))


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_names_the_image_and_mounts_what_its_commands_use(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for doc in docs:
        roles = pods(doc)
        workers = [p for role, p in roles.items() if role != "Launcher"]
        for role, pod in roles.items():
            claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
                      for v in pod.get("volumes", []) if "persistentVolumeClaim" in v}
            assert set(claims.values()) <= {"bert-datasets", "bert-outputs", "bert-logs"}, claims
            for c in pod["containers"]:
                assert c["image"] == IMAGE, (path.name, role)
                command = " ".join(c.get("command", []) + c.get("args", []))
                # tee writes in this pod; under mpirun, bertkit runs in the worker pods
                for written in re.findall(r"tee (/\S+)", command):
                    assert mounted(pod, written), (path.name, role, written)
                runs_in = workers if "mpirun" in command else [pod]
                for used in re.findall(r"=(/[\w./-]+)", command):
                    assert all(mounted(p, used) for p in runs_in), (path.name, role, used)
