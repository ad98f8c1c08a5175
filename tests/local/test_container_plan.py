"""``--runtime container``: what each rendered container becomes (engine arguments), from the same plan.

No engine runs here (tests/images/test_run_local_container.py runs them): every assertion reads
the pod spec real Helm renders and checks the kubelet's semantics were applied to it.
"""

from __future__ import annotations

import json
import os
import stat
from decimal import Decimal
from pathlib import Path

import pytest

from llm_finetune.core.errors import UserError
from llm_finetune.local.containers import apply_fs_group, run_args
from llm_finetune.local import operator_v1 as op
from llm_finetune.local.plan import build_plan
from llm_finetune.local.podspec import container_spec, pod_memory_limit
from llm_finetune.validate.rules import parse_quantity

from .test_plan import SECRET_ENV, manifests, plan_for, rendered_pods


def _flag_values(args: list[str], flag: str) -> list[str]:
    out = [a.split("=", 1)[1] for a in args if a.startswith(flag + "=")]
    out += [args[i + 1] for i, a in enumerate(args[:-1]) if a == flag]
    return out


def test_each_container_runs_its_rendered_image_command_and_security_context(helm4, tmp_path):
    docs, plan = plan_for(helm4, tmp_path)
    _, pods = rendered_pods(docs)
    hosts = [p.name for p in plan.pods]
    for pod, (_, _, _, spec) in zip(plan.pods, pods):
        psc = spec["securityContext"]
        for proc, c in zip(pod.processes, spec["initContainers"] + spec["containers"]):
            args = run_args(["podman"], proc, name="n", run_key="k", hosts=hosts)
            image_at = args.index(c["image"])
            # command replaces the entrypoint, args follow the image: exactly the rendered ones
            assert [json.loads(v) for v in _flag_values(args, "--entrypoint")] == [c["command"]]
            assert args[image_at + 1:] == c.get("args", [])
            assert _flag_values(args, "--user") == [f"{psc['runAsUser']}:{psc['runAsGroup']}"]
            assert _flag_values(args, "--group-add") == [str(psc["fsGroup"])]
            csc = c["securityContext"]
            assert csc["readOnlyRootFilesystem"] and "--read-only" in args and "--read-only-tmpfs=false" in args
            assert _flag_values(args, "--cap-drop") == csc["capabilities"]["drop"] == ["ALL"]
            assert csc["allowPrivilegeEscalation"] is False and "--security-opt=no-new-privileges" in args
            assert psc["seccompProfile"]["type"] == "RuntimeDefault" and not any("seccomp" in a for a in args)
            assert "--pull=never" in args and "--network=host" in args
            assert {f"{h}:127.0.0.1" for h in hosts} == set(_flag_values(args, "--add-host"))


def test_limits_volumes_and_env_follow_the_pod_spec(helm4, tmp_path):
    docs, plan = plan_for(helm4, tmp_path)
    _, pods = rendered_pods(docs)
    for pod, (_, rtype, _, spec) in zip(plan.pods, pods):
        volumes = {v["name"]: v for v in spec["volumes"]}
        for proc, c in zip(pod.processes, spec["initContainers"] + spec["containers"]):
            args = run_args(["podman"], proc, name="n", run_key="k", hosts=[])
            limits = c["resources"].get("limits", {})
            assert _flag_values(args, "--memory") == [str(int(Decimal(limits["memory"][:-2]) * 2**30))]
            assert _flag_values(args, "--cpus") == ([str(limits["cpu"])] if "cpu" in limits else [])
            binds = {v.split(":")[1]: v for v in _flag_values(args, "-v")}
            for m in c["volumeMounts"]:
                vol = volumes[m["name"]]
                if "emptyDir" in vol and vol["emptyDir"].get("medium") == "Memory":
                    # tmpfs of min(sizeLimit, the pod's memory limit): empty_dir.go calculateEmptyDirMemorySize
                    assert m["mountPath"] == "/dev/shm" and m["mountPath"] not in binds
                    size = int(parse_quantity(vol["emptyDir"]["sizeLimit"]))  # the demo's job.shmSizeLimit
                    assert _flag_values(args, "--shm-size") == [str(min(pod_memory_limit(spec), size))]
                    continue
                host, path, mode = binds[m["mountPath"]].split(":")
                read_only = m.get("readOnly") or "configMap" in vol or (vol.get("persistentVolumeClaim") or {}).get(
                    "readOnly")
                assert mode == ("ro" if read_only else "rw"), (rtype, m)
                assert Path(host).is_absolute() and str(tmp_path) in host
            assert binds["/dev/termination-log"].split(":")[0] == proc.termination_log
            # env as the pod sees it: rendered values unmapped, the operator's env, secrets by name only
            env = dict(e.split("=", 1) if "=" in e else (e, None) for e in _flag_values(args, "-e"))
            job = op.JobSpec.from_manifest(next(d for d in docs if d["kind"] == "PyTorchJob"))
            injected = {} if proc.init else dict(op.operator_env(job, rtype, pod.index))
            for e in c["env"]:
                if e["name"] in injected:  # the operator appends its env after the template's: it wins
                    assert env[e["name"]] == injected[e["name"]]
                elif "value" in e:
                    assert env[e["name"]] == e["value"]
                elif "fieldRef" in e["valueFrom"]:  # the pod's name, namespace, replica index, as the kubelet resolves them
                    assert env[e["name"]] == proc.env[e["name"]]
                else:
                    assert env[e["name"]] is None and e["name"] in SECRET_ENV
            assert not any(secret in " ".join(args) for secret in SECRET_ENV.values())
            if not proc.init:  # Workers only: the chart's static rendezvous on worker-0 (no RANK, MASTER_ADDR)
                assert env["PET_NODE_RANK"] == str(pod.index) and env["PET_NNODES"] == str(len(plan.pods))
                assert env["PET_MASTER_ADDR"] == f"{plan.job_name}-worker-0" and "RANK" not in env


def test_unset_seccomp_is_unconfined_and_localhost_profiles_are_refused(helm4, tmp_path):
    docs = manifests(helm4)
    job = next(d for d in docs if d["kind"] == "PyTorchJob")
    spec = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]
    del spec["securityContext"]["seccompProfile"]
    plan = build_plan(docs, tmp_path / "w1", local_env={"PATH": "/usr/bin", **SECRET_ENV}, master_port=1)
    assert "--security-opt=seccomp=unconfined" in run_args(["podman"], plan.pods[0].processes[0], name="n",
                                                           run_key="k", hosts=[])
    spec["securityContext"]["seccompProfile"] = {"type": "Localhost", "localhostProfile": "x.json"}
    plan = build_plan(docs, tmp_path / "w2", local_env={"PATH": "/usr/bin", **SECRET_ENV}, master_port=1)
    with pytest.raises(UserError, match="seccomp profile Localhost/x.json"):
        run_args(["podman"], plan.pods[0].processes[0], name="n", run_key="k", hosts=[])


def test_container_security_context_wins_over_the_pods():
    pod = {"securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 3000, "supplementalGroups": [4000],
                               "seccompProfile": {"type": "RuntimeDefault"}},
           "containers": [{"name": "c", "resources": {"limits": {"memory": "1Gi"}}}],
           "volumes": [{"name": "m", "emptyDir": {"medium": "Memory"}}, {"name": "d", "emptyDir": {"sizeLimit": "1Mi"}}]}
    c = {"name": "c", "image": "i", "command": ["x"], "args": ["y"],
         "securityContext": {"runAsUser": 2000, "seccompProfile": {"type": "Unconfined"}, "capabilities": {"add": ["NET_RAW"]}},
         "volumeMounts": [{"name": "m", "mountPath": "/scratch"}, {"name": "d", "mountPath": "/data"}]}
    spec = container_spec("p", pod, c, folders={"d": "/host/d"}, env={}, init=False)
    assert (spec.command, spec.args) == (["x"], ["y"])
    assert (spec.user, spec.group, spec.groups, spec.seccomp, spec.cap_add) == (2000, 1000, [3000, 4000], "Unconfined",
                                                                             ["NET_RAW"])
    assert not spec.no_new_privileges  # allowPrivilegeEscalation unset: the kubelet allows it
    memory, disk = spec.mounts
    assert (memory.kind, memory.size_bytes) == ("memory", 2**30)  # no sizeLimit: the pod's memory limit
    assert (disk.kind, disk.size_bytes, disk.host) == ("emptyDir", 2**20, "/host/d")


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's group needs root")
def test_fs_group_ownership_is_the_kubelets(tmp_path):
    root = tmp_path / "claim"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "f").write_text("x")
    os.chmod(root / "sub" / "f", 0o600)
    (root / "link").symlink_to("/etc/hostname")
    apply_fs_group(root, 4242)
    for path, want in ((root, 0o2770), (root / "sub", 0o2770), (root / "sub" / "f", 0o660)):
        st = path.stat()
        assert st.st_gid == 4242 and stat.S_IMODE(st.st_mode) & want == want, path
    assert os.lstat(root / "link").st_gid != 4242 or os.lstat("/etc/hostname").st_gid == 4242
    # OnRootMismatch: a root that is already right is not walked again
    (root / "new").write_text("y")
    os.chmod(root / "new", 0o600)
    apply_fs_group(root, 4242, policy="OnRootMismatch")
    assert stat.S_IMODE((root / "new").stat().st_mode) == 0o600
    apply_fs_group(root, 4242, policy="Always")
    assert stat.S_IMODE((root / "new").stat().st_mode) == 0o660 and (root / "new").stat().st_gid == 4242
