"""Kubernetes manifests: render the kustomizations, validate every object
against the Kubernetes OpenAPI schemas (kubernetes-validate, offline, strict),
check the ServiceMonitor structurally (CRDs are not in those schemas), and
check that the objects agree with each other and with the gateway."""

from __future__ import annotations

import re

import pytest
import yaml

import kustomize_lite
from helpers import DEPLOY, run, tool

K8S = DEPLOY / "k8s"
TARGETS = ["", "base", "overlays/dev"]
# Oldest and newest Kubernetes minor versions the manifests are checked against.
# 1.29: matchLabelKeys in topology spread and the PDB's unhealthyPodEvictionPolicy
# are on by default from 1.27; kubernetes-validate bundles 1.25 and up.
K8S_VERSIONS = ["1.29.0", None]  # None: the newest schema bundled


def rendered(target: str) -> list[dict]:
    return kustomize_lite.render(K8S / target)


def by_kind(objs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


BASE = rendered("base")
DEPLOYMENT = by_kind(BASE, "Deployment", "shardcast")
POD = DEPLOYMENT["spec"]["template"]["spec"]
CONTAINER = next(c for c in POD["containers"] if c["name"] == "shardcast")


def env_of(container: dict) -> dict:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def duration_seconds(text: str) -> float:
    """10s, 500ms, 1m30s -> seconds (the gateway's duration syntax)."""
    total, pos = 0.0, 0
    for m in re.finditer(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text):
        assert m.start() == pos, f"bad duration {text!r}"
        total += float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]
        pos = m.end()
    assert pos == len(text) and pos > 0, f"bad duration {text!r}"
    return total


@pytest.mark.parametrize("target", TARGETS)
def test_kubectl_kustomize_agrees(target):
    """The real kustomize (kubectl kustomize) renders the same objects as the
    fallback renderer used on machines without kubectl."""
    kubectl = tool("kubectl")
    if not kubectl:
        pytest.skip("kubectl not installed: rendered with deploy/tests/kustomize_lite.py only")
    res = run([kubectl, "kustomize", str(K8S / target)])
    assert res.returncode == 0, res.stderr
    real = [d for d in yaml.safe_load_all(res.stdout) if d]
    lite = rendered(target)
    key = lambda o: (o["kind"], o["metadata"]["name"])  # noqa: E731
    assert sorted(map(key, real)) == sorted(map(key, lite))
    real_by = {key(o): kustomize_lite.normalize(o) for o in real}
    for obj in lite:
        assert kustomize_lite.normalize(obj) == real_by[key(obj)], f"{key(obj)} differs"


@pytest.mark.parametrize("version", K8S_VERSIONS, ids=lambda v: v or "latest")
@pytest.mark.parametrize("target", ["base", "overlays/dev"])
def test_schema_valid(target, version):
    kv = pytest.importorskip("kubernetes_validate")
    version = version or kv.latest_version()
    checked, skipped = [], []
    for obj in rendered(target):
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            skipped.append(obj["kind"])
            continue
        try:
            kv.validate(obj, version, strict=True)
        except kv.ValidationError as e:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} invalid for Kubernetes {version}: "
                        f"{e.message} at {'/'.join(map(str, e.path))}")
        checked.append(obj["kind"])
    print(f"kubernetes {version}: valid {checked}; not in the bundled schemas "
          f"(checked by test_servicemonitor_structure): {skipped}")
    assert "Deployment" in checked and "HorizontalPodAutoscaler" in checked


def test_validator_is_strict():
    """The schema check would catch a misspelt field (guards against a validator
    that silently accepts anything)."""
    kv = pytest.importorskip("kubernetes_validate")
    bad = yaml.safe_load(yaml.safe_dump(DEPLOYMENT))
    bad["spec"]["template"]["spec"]["terminationGracePeriod"] = 30
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, kv.latest_version(), strict=True)


def test_servicemonitor_structure():
    """monitoring.coreos.com/v1 is a CRD, absent from kubernetes-validate's
    schemas: check the fields Prometheus Operator needs, by hand."""
    sm = by_kind(BASE, "ServiceMonitor")
    svc = by_kind(BASE, "Service", "shardcast")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(sm["spec"]) <= {"selector", "endpoints", "namespaceSelector", "jobLabel",
                                "targetLabels", "podTargetLabels", "sampleLimit"}
    sel = sm["spec"]["selector"]["matchLabels"]
    assert sel.items() <= svc["metadata"]["labels"].items(), "ServiceMonitor does not select the Service"
    port_names = {p["name"] for p in svc["spec"]["ports"]}
    duration = re.compile(r"^(\d+(ms|s|m|h))+$")
    for ep in sm["spec"]["endpoints"]:
        assert set(ep) <= {"port", "path", "interval", "scrapeTimeout", "scheme", "honorLabels",
                           "relabelings", "metricRelabelings"}, ep
        assert ep["port"] in port_names, f"endpoint port {ep['port']} is not a Service port"
        assert ep["port"] == "admin" and ep["path"] == "/metrics"
        assert duration.match(ep["interval"]) and duration.match(ep["scrapeTimeout"])
        assert duration_seconds(ep["scrapeTimeout"]) <= duration_seconds(ep["interval"])


def test_selectors_match_pods():
    labels = DEPLOYMENT["spec"]["template"]["metadata"]["labels"]
    assert DEPLOYMENT["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert by_kind(BASE, "Service")["spec"]["selector"].items() <= labels.items()
    assert by_kind(BASE, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for c in POD["topologySpreadConstraints"]:
        assert c["labelSelector"]["matchLabels"].items() <= labels.items()


def test_ports_and_probes():
    ports = {p["name"]: p["containerPort"] for p in CONTAINER["ports"]}
    assert ports == {"ws": 8000, "admin": 8001}
    env = env_of(CONTAINER)
    assert env["SHARDCAST_LISTEN"].endswith(":8000")
    # Probes come from the kubelet on the node: the admin port must not be loopback-only.
    assert env["SHARDCAST_ADMIN_LISTEN"] == "0.0.0.0:8001"
    ready, live = CONTAINER["readinessProbe"]["httpGet"], CONTAINER["livenessProbe"]["httpGet"]
    assert (ready["path"], ready["port"]) == ("/health/ready", "admin")
    assert (live["path"], live["port"]) == ("/health/live", "admin")
    svc = by_kind(BASE, "Service")
    for p in svc["spec"]["ports"]:
        assert p["targetPort"] in ports
    ing = by_kind(BASE, "Ingress")
    for rule in ing["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == svc["metadata"]["name"]
            assert backend["port"]["name"] == "ws", "only the WebSocket port may be public"


def test_termination_outlasts_the_drain():
    """preStop + drain window + close timeout must fit in the grace period,
    which counts from the start of preStop; otherwise the kubelet SIGKILLs the
    gateway mid-drain and the remaining clients all reconnect at once."""
    env = env_of(CONTAINER)
    pre_stop = CONTAINER["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    budget = (float(pre_stop[1]) + duration_seconds(env["SHARDCAST_DRAIN_WINDOW"])
              + duration_seconds(env["SHARDCAST_CLOSE_TIMEOUT"]))
    grace = POD["terminationGracePeriodSeconds"]
    print(f"preStop + drain + close timeout = {budget}s, terminationGracePeriodSeconds = {grace}s")
    assert budget + 5 <= grace


def test_security_context():
    pod_sc, sc = POD["securityContext"], CONTAINER["securityContext"]
    assert pod_sc["runAsNonRoot"] is True
    assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    # The image's USER (deploy/docker/Dockerfile) is the uid the pod runs as.
    dockerfile = (DEPLOY / "docker" / "Dockerfile").read_text()
    user = re.search(r"^USER (\d+):(\d+)$", dockerfile, re.M)
    assert user and int(user.group(1)) == pod_sc["runAsUser"] and int(user.group(2)) == pod_sc["runAsGroup"]
    assert POD["automountServiceAccountToken"] is False


def test_rollout_and_scaling():
    strategy = DEPLOYMENT["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0 and strategy["maxSurge"] >= 1
    assert "replicas" not in DEPLOYMENT["spec"], "the HPA owns replicas"
    hpa = by_kind(BASE, "HorizontalPodAutoscaler")
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", DEPLOYMENT["metadata"]["name"])
    pods_metrics = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert pods_metrics == ["shardcast_connections_per_pod"]
    assert hpa["spec"]["minReplicas"] >= 2
    pdb = by_kind(BASE, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    # Requests exist (the HPA's CPU utilization is relative to them) and the
    # shard count matches the CPU request.
    req = CONTAINER["resources"]["requests"]
    assert float(req["cpu"]) == float(env_of(CONTAINER)["SHARDCAST_SHARDS"])
    assert "cpu" not in CONTAINER["resources"].get("limits", {}), "CPU limits throttle the shards"


def test_ingress_annotations():
    ann = by_kind(BASE, "Ingress")["metadata"]["annotations"]
    p = "nginx.ingress.kubernetes.io/"
    assert ann[p + "affinity"] == "cookie"
    assert int(ann[p + "proxy-read-timeout"]) >= 3600
    assert int(ann[p + "proxy-send-timeout"]) >= 3600
    assert by_kind(BASE, "Ingress")["spec"]["ingressClassName"] == "nginx"


def test_redis_url_from_a_secret():
    """Every pod gets SHARDCAST_REDIS from the `shardcast-redis` Secret (a URL
    may carry a password), and it is required: a pod without a shared broker
    would deliver a publish only to its own clients."""
    env = {e["name"]: e for e in CONTAINER["env"]}
    ref = env["SHARDCAST_REDIS"]["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == ("shardcast-redis", "url")
    assert not ref.get("optional", False)
    assert "SHARDCAST_REDIS_URL" not in env


def test_dev_overlay_adds_redis():
    dev = rendered("overlays/dev")
    assert by_kind(dev, "Deployment", "shardcast-redis")
    svc = by_kind(dev, "Service", "shardcast-redis")
    gw = by_kind(dev, "Deployment", "shardcast")
    c = next(c for c in gw["spec"]["template"]["spec"]["containers"] if c["name"] == "shardcast")
    ref = next(e for e in c["env"] if e["name"] == "SHARDCAST_REDIS")["valueFrom"]["secretKeyRef"]
    secret = by_kind(dev, "Secret", ref["name"])
    url = secret["stringData"][ref["key"]]
    assert url == f"redis://{svc['metadata']['name']}:{svc['spec']['ports'][0]['port']}"
    assert all(o["metadata"].get("namespace") == "shardcast-dev" for o in dev if o["kind"] != "Namespace")
    # The base has no Redis of its own: production points at a real one.
    assert not [o for o in BASE if "redis" in o["metadata"]["name"]]
