"""GPU overlays that schedule and mean something: node affinities that match the labels GPU Feature
Discovery really sets (the "-SHARED" product suffix of time-sliced GPUs), a driver floor from the one
GPU stack table, the encoder sharing the renderer's GPU instead of taking one, execution providers
pinned so a renderer never silently runs on the CPU, a neural backend whose model files must be there,
and the TensorRT engine cache on a persistent volume."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from services.renderer.backends.musetalk import FILES as MUSETALK_FILES
from tests.deploy.manifests import (
    DEPLOY,
    GPU_OVERLAYS,
    OVERLAYS,
    REPO,
    containers,
    device_plugin_config,
    env_of,
    mounts_of,
    named,
    of_kind,
    pod_spec,
    render,
    runs,
    service_containers,
    service_of,
    volume,
)

GPU = "nvidia.com/gpu"
NO_NVENC = {
    "NVIDIA-A100-SXM4-80GB",
    "NVIDIA-A100-SXM4-40GB",
    "NVIDIA-A100-PCIE-40GB",
    "NVIDIA-A30",
    "NVIDIA-H100-80GB-HBM3",
}


def stack() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "gpu-stack.yaml").read_text())  # type: ignore[no-any-return]


def gpu_count(c: dict[str, Any]) -> int:
    return int(c["resources"].get("limits", {}).get(GPU, 0))


def required_terms(dep: dict[str, Any]) -> list[dict[str, Any]]:
    affinity = pod_spec(dep)["affinity"]["nodeAffinity"]
    return affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]  # type: ignore[no-any-return]


def expressions(dep: dict[str, Any]) -> dict[str, dict[str, Any]]:
    (term,) = required_terms(dep)  # one term: every expression must hold
    return {e["key"]: e for e in term["matchExpressions"]}


def gpu_deployments(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in of_kind(docs, "Deployment") if any(gpu_count(c) for c in containers(d))]


def label_suffix_problems(dep: dict[str, Any]) -> list[str]:
    """Product names must carry "-SHARED" exactly on time-sliced nodes (renameByDefault: false)."""
    exprs = expressions(dep)
    problems = []
    terms = [exprs]
    for pref in pod_spec(dep)["affinity"]["nodeAffinity"].get("preferredDuringSchedulingIgnoredDuringExecution", []):
        terms.append({e["key"]: e for e in pref["preference"]["matchExpressions"]})
    sharing = exprs.get("nvidia.com/gpu.sharing-strategy")
    for term in terms:
        product = term.get("nvidia.com/gpu.product")
        if product is None:
            continue
        if sharing is None or sharing["operator"] != "In" or len(sharing["values"]) != 1:
            problems.append("a product affinity needs one required nvidia.com/gpu.sharing-strategy")
            continue
        shared = sharing["values"] == ["time-slicing"]
        for value in product["values"]:
            if value.endswith("-SHARED") != shared:
                problems.append(f"{value}: GFD names it {'with' if shared else 'without'} -SHARED on these nodes")
    return problems


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gpus_only_for_the_renderer_and_the_encoder_in_gpu_overlays(overlay: str) -> None:
    docs = render(overlay)
    for dep in of_kind(docs, "Deployment"):
        spec = pod_spec(dep)
        for c in containers(dep):
            service = service_of(c)
            wants = overlay in GPU_OVERLAYS and service in {"renderer", "encoder"}
            assert gpu_count(c) == (1 if wants else 0), f"{overlay}: {dep['metadata']['name']}/{c['name']}"
        if not any(gpu_count(c) for c in containers(dep)):
            assert "tolerations" not in spec and "runtimeClassName" not in spec
            # in the GPU overlays, on nodes without a GPU (components/cpu-nodes); anywhere in cpu
            assert spec.get("affinity") == (CPU_NODES if overlay in GPU_OVERLAYS else None), dep["metadata"]["name"]


#: The CPU services' node affinity in the GPU overlays: no GPU Feature Discovery GPU count on the node.
CPU_NODES = {
    "nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{"key": "nvidia.com/gpu.count", "operator": "DoesNotExist"}]}]
        }
    }
}


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_cpu_services_stay_off_the_gpu_nodes(overlay: str) -> None:
    """The GPU overlays said tts, audio_features and the gateway stay on CPU nodes, but nothing kept
    them (or web) off a GPU node sized for its media pods. They require a node without the label
    GPU Feature Discovery gives every GPU node, one the GPU pods themselves select on."""
    docs = render(overlay)
    for service in ("gateway", "web", "tts", "audio_features"):
        dep, _ = runs(docs, service)
        assert pod_spec(dep).get("affinity") == CPU_NODES, f"{overlay}: {service}"
    terms = CPU_NODES["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    (expression,) = terms[0]["matchExpressions"]
    # a label of GFD's (not the GPU Operator's nvidia.com/gpu.present), which the media pods select on
    gfd = re.search(r"The overlays match\sonly GFD labels: (.*?)\.\s", (REPO / "docs" / "DEPLOY.md").read_text(), re.S)
    assert gfd is not None and f"`{expression['key']}`" in gfd.group(1)
    assert expression["key"] in expressions(runs(render("gpu"), "renderer")[0])


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_gpu_pods_tolerate_the_taint_and_have_a_driver_floor(overlay: str) -> None:
    floors = stack()["driver_floor"]
    for dep in gpu_deployments(render(overlay)):
        assert any(t["key"] == GPU and t["operator"] == "Exists" for t in pod_spec(dep)["tolerations"])
        nvenc = any(env_of(c).get("TALKMESH_ENCODER__VIDEO__ENCODER") == "nvenc" for c in containers(dep))
        floor = floors["nvenc"] if nvenc else floors["inference"]
        driver = expressions(dep)["nvidia.com/cuda.driver.major"]
        assert driver["operator"] == "Gt" and driver["values"] == [str(floor - 1)], dep["metadata"]["name"]
        assert "nvidia.com/gpu.present" not in expressions(dep), "set by the GPU Operator only, not by GFD"


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_product_labels_carry_the_shared_suffix_exactly_on_time_sliced_nodes(overlay: str) -> None:
    for dep in gpu_deployments(render(overlay)):
        assert label_suffix_problems(dep) == [], dep["metadata"]["name"]


def test_the_suffix_check_can_fail() -> None:
    dep = runs(render("gpu"), "encoder")[0]
    bad = yaml.safe_load(yaml.safe_dump(dep))
    product = next(e for e in required_terms(bad)[0]["matchExpressions"] if e["key"] == "nvidia.com/gpu.product")
    product["values"] = ["Tesla-T4", "NVIDIA-L4"]  # what the nodes are called without time-slicing
    assert any("Tesla-T4" in p for p in label_suffix_problems(bad))


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_the_encoder_shares_a_gpu_and_goes_only_where_nvenc_is(overlay: str) -> None:
    docs = render(overlay)
    dep, encoder = runs(docs, "encoder")
    env = env_of(encoder)
    assert env["TALKMESH_ENCODER__VIDEO__ENCODER"] == "nvenc", "NVENC or fail; no silent x264 on a GPU node"
    assert "video" in env["NVIDIA_DRIVER_CAPABILITIES"].split(","), "mounts libnvidia-encode"
    assert not encoder["image"].endswith("-gpu"), "NVENC comes with PyAV; the encoder has no GPU image"
    exprs = expressions(dep)
    # Never a whole GPU for NVENC: a time-slice, either next to its renderer or on its own.
    assert exprs["nvidia.com/gpu.sharing-strategy"]["values"] == ["time-slicing"]
    products = {v.removesuffix("-SHARED") for v in exprs["nvidia.com/gpu.product"]["values"]}
    assert exprs["nvidia.com/gpu.product"]["operator"] == "In"
    assert {"Tesla-T4", "NVIDIA-L4", "NVIDIA-A10G"} <= products and not products & NO_NVENC
    renderer_dep, _ = runs(docs, "renderer")
    if renderer_dep is dep:
        # Co-located: two slices, one per container, of the node's only GPU.
        assert [gpu_count(c) for c in pod_spec(dep)["containers"]] == [1, 1]
        assert exprs["nvidia.com/gpu.count"] == {"key": "nvidia.com/gpu.count", "operator": "In", "values": ["1"]}
        (replicas,) = exprs["nvidia.com/gpu.replicas"]["values"]
        configs = [yaml.safe_load(t) for t in device_plugin_config()["data"].values()]
        offered = {c["sharing"]["timeSlicing"]["resources"][0]["replicas"] for c in configs if "sharing" in c}
        assert int(replicas) in offered and int(replicas) % 2 == 0, "whole media pods per GPU"


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_the_renderer_pins_its_providers_and_runs_a_neural_backend_with_its_models(overlay: str) -> None:
    docs = render(overlay)
    dep, renderer = runs(docs, "renderer")
    env = env_of(renderer)
    providers = env["TALKMESH_RENDERER__EXECUTION__PROVIDERS"].split(",")
    assert providers and providers[0] == "tensorrt" and "cpu" not in providers, providers
    assert set(providers) <= {"tensorrt", "cuda"}
    assert renderer["image"].endswith("-gpu")
    makefile = (REPO / "Makefile").read_text()
    assert "renderer" in re.search(r"^GPU_IMAGES \?= (.*)$", makefile, re.M).group(1).split()  # type: ignore[union-attr]
    # A neural backend by default, its model directory on the read-only models volume.
    assert env["TALKMESH_RENDERER__DEFAULT_BACKEND"] == "musetalk"
    assert "musetalk" in env["TALKMESH_RENDERER__BACKENDS"].split(",")
    model_dir = env["TALKMESH_RENDERER__MUSETALK__PATH"]
    mount = mounts_of(renderer)["/models"]
    assert model_dir.startswith("/models/") and mount["readOnly"] is True
    models = volume(dep, mount["name"])["persistentVolumeClaim"]
    claim = named(docs, "PersistentVolumeClaim", models["claimName"])
    # filled once through a read-write mount (docs/DEPLOY.md), read-only in every service container
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for _, model_dep, c in service_containers(docs):
        for m in c.get("volumeMounts", []):
            source = volume(model_dep, m["name"]).get("persistentVolumeClaim", {})
            if source.get("claimName") == claim["metadata"]["name"]:
                assert m.get("readOnly") is True, f"{c['name']} mounts the models read-write"
    # Missing model files stop the pod before the renderer starts, naming the file.
    (check,) = [c for c in pod_spec(dep).get("initContainers", []) if c["name"] == "check-models"]
    files = {f"{model_dir}/{name}" for name, _ in MUSETALK_FILES.values()}
    assert set(check["command"][4:]) == files
    assert "python -m talkmesh.modelcheck" in check["command"][2]  # external data too (test_modelcheck.py)
    assert check["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert mounts_of(check)["/models"]["name"] == mount["name"]
    af_dep, af = runs(docs, "audio_features")
    whisper = env_of(af)["TALKMESH_AUDIO_FEATURES__WHISPER_ENCODER__PATH"]
    (af_check,) = [c for c in pod_spec(af_dep).get("initContainers", []) if c["name"] == "check-models"]
    assert af_check["command"][4:] == [whisper]


def test_the_neural_component_says_the_access_modes_its_claims_ask_for() -> None:
    """Its comments said ReadOnlyMany for the models claim, which asks for ReadWriteMany (the upload
    pod fills it through the claim; docs/DEPLOY.md, "Model files")."""
    component = DEPLOY / "k8s" / "components" / "neural"
    claims = [d for d in yaml.safe_load_all((component / "pvc.yaml").read_text()) if d]
    asked = {mode for claim in claims for mode in claim["spec"]["accessModes"]}
    text = (component / "kustomization.yaml").read_text()
    comments = "\n".join(line for line in text.splitlines() if line.lstrip().startswith("#"))
    named = set(re.findall(r"\bRead(?:Only|Write)(?:Once|Many)\b|\bReadWriteOncePod\b", comments))
    assert named == asked == {"ReadWriteMany"}


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_engine_cache_on_a_persistent_volume_sized_for_musetalk(overlay: str) -> None:
    docs = render(overlay)
    dep, renderer = runs(docs, "renderer")
    cache = env_of(renderer)["TALKMESH_RENDERER__EXECUTION__TRT_CACHE_DIR"]
    mount = mounts_of(renderer)[cache]
    assert not mount.get("readOnly")
    claim = named(docs, "PersistentVolumeClaim", volume(dep, mount["name"])["persistentVolumeClaim"]["claimName"])
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"], "shared by every renderer pod"
    size = claim["spec"]["resources"]["requests"]["storage"]
    assert size.endswith("Gi") and int(size[:-2]) >= 20, "three GPU architectures of MuseTalk FP16 engines"
    # Not the avatar emptyDir: engines must survive the pod and not count against its eviction limit.
    assert not cache.startswith("/home/talkmesh/.cache")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_runtime_class_is_configurable_for_the_gpu_pods(overlay: str) -> None:
    docs = render(overlay, "nvidia-runtime-class")
    for dep in of_kind(docs, "Deployment"):
        uses_gpu = any(gpu_count(c) for c in containers(dep))
        assert pod_spec(dep).get("runtimeClassName") == ("nvidia" if uses_gpu else None), dep["metadata"]["name"]
    for dep in of_kind(render(overlay), "Deployment"):
        assert "runtimeClassName" not in pod_spec(dep), "off unless the component is listed"


#: MuseTalk's files in FP32 (UNet 3.4 GB, VAE encoder + decoder 0.3 GB; components/neural/pvc.yaml).
MUSETALK_WEIGHTS = 3700 * 1024 * 1024


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_renderers_memory_shares_fit_the_gpu_and_the_smallest_admitted_card_batches(overlay: str) -> None:
    from services.renderer.backends.musetalk import MuseTalkBackend
    from services.renderer.config import RendererConfig
    from talkmesh.common.config import load_config
    from talkmesh.common.gpu import GpuMemory, MiB, plan_gpu

    docs = render(overlay)
    dep, renderer = runs(docs, "renderer")
    env = {k: v for k, v in env_of(renderer).items() if k.startswith("TALKMESH_RENDERER__")}
    cfg = load_config(RendererConfig, None, env_prefix="TALKMESH_RENDERER", env=env)
    exprs = expressions(dep)
    sharing = exprs["nvidia.com/gpu.sharing-strategy"]["values"]
    if sharing == ["time-slicing"]:
        # Two slices per media pod (renderer + encoder): replicas / 2 renderers on one GPU, and the
        # encoders keep at least a fifth of the memory.
        (replicas,) = exprs["nvidia.com/gpu.replicas"]["values"]
        renderers = int(replicas) // 2
        assert renderers * cfg.gpu.share <= 0.8 + 1e-9, (renderers, cfg.gpu.share)
    else:
        assert cfg.gpu.share == 1.0, "a whole GPU of its own"
    (floor,) = exprs["nvidia.com/gpu.memory"]["values"]
    card = GpuMemory(int(floor) * MiB, int(floor) * MiB)
    plan = plan_gpu(cfg.gpu, weights=MUSETALK_WEIGHTS, per_frame_bytes=MuseTalkBackend.bytes_per_frame,
                    cap=cfg.batch.max_size_gpu, memory=card)  # fmt: skip
    assert plan.max_batch >= 4, f"{overlay}: MuseTalk batch {plan.max_batch} on a {floor} MiB card"


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_one_renderer_pod_starts_first_to_build_the_engines(overlay: str) -> None:
    """The renderer-bearing Deployment starts with one pod (HPA minReplicas 1, no replicas field), as
    docs/DEPLOY.md says: the first pod builds the TensorRT engines into the shared cache, and pods
    started with it would build the same engines at once. The docs' replica table agrees."""
    docs = render(overlay)
    dep, _ = runs(docs, "renderer")
    name = dep["metadata"]["name"]
    assert "replicas" not in dep["spec"]
    hpa = named(docs, "HorizontalPodAutoscaler", name)
    assert hpa["spec"]["minReplicas"] == 1, f"{overlay}: {name} starts {hpa['spec']['minReplicas']} pods"
    text = (REPO / "docs" / "DEPLOY.md").read_text()
    assert "Start with one replica" in text
    row = re.search(rf"^\| {re.escape(overlay)} \| {name} \| (\d+)\u2013(\d+) \|", text, re.M)
    assert row is not None, f"DEPLOY.md's avatar storage table has no row for {overlay}"
    assert (int(row.group(1)), int(row.group(2))) == (1, hpa["spec"]["maxReplicas"])
