"""scripts/k8s/resnet50.yaml: a complete Indexed Job + headless Service that parallel.py reads.

No cluster here: the manifest is loaded as YAML and its fields checked against
what Kubernetes needs for pods to find pod 0 (Indexed completion mode, the
pod's subdomain = a headless Service that selects the Job's pods), what a
preempted job needs to resume (restartPolicy, pod failure policy, grace
period), and what `parallel.plan` reads: each pod's environment, as the
manifest and Kubernetes give it, must plan the launch the manifest means.
"""

import os
import shlex
import subprocess

from conftest import ROOT
import pytest
import yaml

from resnet_jax import config as config_lib
from resnet_jax import main, parallel

MANIFEST = os.path.join(ROOT, "scripts", "k8s", "resnet50.yaml")


@pytest.fixture(scope="module")
def objects():
    with open(MANIFEST) as f:
        documents = [d for d in yaml.safe_load_all(f) if d]
    by_kind = {d["kind"]: d for d in documents}
    assert sorted(by_kind) == ["Job", "PersistentVolumeClaim", "Service"]
    assert len(documents) == 3
    return by_kind


def _container(job):
    [container] = job["spec"]["template"]["spec"]["containers"]
    return container


def _literal_env(container) -> dict:
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def test_indexed_job_finds_pod_0_through_a_headless_service(objects):
    job, service = objects["Job"], objects["Service"]
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] > 1
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True  # before pod 0 is Ready
    assert pod["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["selector"] == {"batch.kubernetes.io/job-name": job["metadata"]["name"]}
    env = _literal_env(_container(job))
    assert env["JOB_SERVICE"] == service["metadata"]["name"]
    assert int(env["JOB_COMPLETIONS"]) == spec["completions"]
    [field] = [e["valueFrom"]["fieldRef"]["fieldPath"] for e in _container(job)["env"]
               if e["name"] == "JOB_NAME"]
    assert field == "metadata.labels['batch.kubernetes.io/job-name']"
    assert [p["port"] for p in service["spec"]["ports"]] == [int(env["JAX_COORDINATOR_PORT"])]


def test_every_pod_plans_the_launch_the_manifest_means(objects):
    job = objects["Job"]
    name, completions = job["metadata"]["name"], job["spec"]["completions"]
    container = _container(job)
    gpus = container["resources"]["limits"]["nvidia.com/gpu"]
    for index in range(completions):
        # What a pod sees: the manifest's values, its label, and what Kubernetes sets.
        environ = {**_literal_env(container), "JOB_NAME": name,
                   "JOB_COMPLETION_INDEX": str(index), "HOSTNAME": f"{name}-{index}",
                   "KUBERNETES_SERVICE_HOST": "10.0.0.1"}
        launch = parallel.plan(environ=environ, gpus=gpus)
        assert (launch.launcher, launch.num_processes, launch.process_id) == (
            "kubernetes", completions, index)
        assert launch.coordinator_address == (
            f"{name}-0.{objects['Service']['metadata']['name']}:"
            f"{environ['JAX_COORDINATOR_PORT']}")
        assert launch.local_device_ids is None and launch.expected_gpus == gpus
        assert parallel.coordinator_wait(environ) >= 300  # pods start minutes apart


def test_the_command_trains_the_recipe_on_the_shared_volume(objects):
    job, claim = objects["Job"], objects["PersistentVolumeClaim"]
    pod, container = job["spec"]["template"]["spec"], _container(job)
    script = container["args"][0]
    subprocess.run(["bash", "-n", "-c", script], check=True)  # the wrapper parses
    invocation = script.split("python -m resnet_jax.main", 1)[1].split(" &\n", 1)[0]
    words = shlex.split(invocation.replace("\\\n", " "))
    assert words[:2] == ["--config", "configs/resnet50_v15.py"]
    assert os.path.isfile(os.path.join(ROOT, words[1]))
    options = dict(w.split("=", 1) for w in words[2:] if "=" in w)
    workdir = words[words.index("--workdir") + 1]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["shared"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert workdir.startswith(mounts["shared"] + "/")
    assert options["--config.data.root"].startswith(mounts["shared"] + "/")
    config = config_lib.recipe("resnet50_v15")  # every --config.x names a field
    for key in options:
        section, _, field = key.removeprefix("--config.").rpartition(".")
        assert field in (config[section] if section else config), key
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    assert mounts["dshm"] == "/dev/shm"


def test_a_preempted_pod_saves_and_is_replaced(objects):
    spec = objects["Job"]["spec"]
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"  # a pod failure policy needs it
    assert spec["backoffLimit"] >= 1
    preempted, stopped, hopeless = spec["podFailurePolicy"]["rules"]  # the first match applies
    assert preempted == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}
    # A run stopped by a signal (this pod's or another's, as all stop together) exits with
    # RESNET_JAX_STOP_EXIT_CODE: the pod is replaced, not counted as done.
    env = _literal_env(_container(objects["Job"]))
    assert main.stop_exit_code(env) == 143
    assert stopped == {"action": "Ignore", "onExitCodes": {
        "containerName": "train", "operator": "In", "values": [143]}}
    # main's exit codes for a ConfigError and a TrainingError: a retry would fail the same way.
    assert hopeless == {"action": "FailJob", "onExitCodes": {
        "containerName": "train", "operator": "In", "values": [2, 3]}}
    assert pod["terminationGracePeriodSeconds"] >= 120  # to the next logged step, then save
    script = _container(objects["Job"])["args"][0]
    assert "trap 'kill -TERM" in script  # bash passes SIGTERM on to the trainer
    assert _container(objects["Job"])["resources"]["limits"]["nvidia.com/gpu"] >= 1
