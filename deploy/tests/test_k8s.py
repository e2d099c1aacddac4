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
ADAPTER_CONFIG = "shardcast-adapter-rules"
ADAPTER_RULES = K8S / "components" / "prometheus-adapter" / "adapter-rules.yaml"
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
@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t or "k8s")
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
    # Everything in shardcast-dev, but the adapter's configuration, which lives
    # in the adapter's namespace (test_adapter_rules_come_with_the_overlays).
    assert all(o["metadata"].get("namespace") == "shardcast-dev" for o in dev
               if o["kind"] != "Namespace" and o["metadata"]["name"] != ADAPTER_CONFIG)
    # The base has no Redis of its own: production points at a real one.
    assert not [o for o in BASE if "redis" in o["metadata"]["name"]]


# ---------------------------------------------------------------------------
# Admin port access: the NetworkPolicy, evaluated for the sources that matter.

def selects(selector: dict, labels: dict) -> bool:
    """A label selector (matchLabels only; {} selects everything)."""
    if set(selector) - {"matchLabels"}:
        raise NotImplementedError(f"selector outside matchLabels: {selector}")
    return selector.get("matchLabels", {}).items() <= labels.items()


def admits(policy: dict, container: dict, port: int, ns_labels: dict, same_namespace: bool,
           pod_labels: dict | None = None) -> bool:
    """Whether `policy` lets a pod with `pod_labels`, in a namespace labelled
    `ns_labels` (the gateway's own one if `same_namespace`), reach `port` of a
    gateway pod it selects: NetworkPolicy ingress semantics for the fields used
    here (rules are OR-ed; no `ports` means every port, no `from` every source;
    a peer's namespaceSelector and podSelector are AND-ed; a peer without
    namespaceSelector means the policy's own namespace)."""
    names = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert "Ingress" in policy["spec"]["policyTypes"]
    for rule in policy["spec"].get("ingress", []):
        ports = [names.get(p["port"], p["port"]) for p in rule.get("ports", [])]
        assert all(p.get("protocol", "TCP") == "TCP" and "endPort" not in p for p in rule.get("ports", []))
        if ports and port not in ports:
            continue
        peers = rule.get("from", [])
        if not peers:
            return True
        for peer in peers:
            if set(peer) - {"namespaceSelector", "podSelector"}:
                raise NotImplementedError(f"peer outside the evaluated subset: {peer}")
            ns_ok = (selects(peer["namespaceSelector"], ns_labels) if "namespaceSelector" in peer
                     else same_namespace)
            pod_ok = selects(peer.get("podSelector", {}), pod_labels or {})
            if ns_ok and pod_ok:
                return True
    return False


PUBLISHER_NS = {"shardcast.io/publisher": "true"}
PROMETHEUS_NS = {"shardcast.io/prometheus": "true"}


def test_network_policy_guards_the_admin_port():
    """8001 (publish API, metrics) only from the namespaces labelled for
    publishers and Prometheus; 8000 (WebSocket) from anywhere, as before."""
    policy = by_kind(BASE, "NetworkPolicy", "shardcast")
    gateway = DEPLOYMENT["spec"]["template"]["metadata"]["labels"]
    assert selects(policy["spec"]["podSelector"], gateway), "the policy does not select the gateway pods"
    ports = {p["name"]: p["containerPort"] for p in CONTAINER["ports"]}
    ws, admin = ports["ws"], ports["admin"]
    assert (ws, admin) == (8000, 8001)
    other = {"kubernetes.io/metadata.name": "default"}
    # The WebSocket port: every source.
    for ns, same in ((other, False), ({}, True), (PUBLISHER_NS, False)):
        assert admits(policy, CONTAINER, ws, ns, same), f"port {ws} refused from {ns}"
    # The admin port: the labelled namespaces, any pod in them.
    for ns in (PUBLISHER_NS, PROMETHEUS_NS, {**other, **PUBLISHER_NS}):
        assert admits(policy, CONTAINER, admin, ns, False, {"app": "anything"}), f"port {admin} refused from {ns}"
    # ... and nothing else: not other namespaces, not the gateway's own
    # unlabelled namespace, not a label with another value.
    for ns, same in ((other, False), ({}, True), ({"shardcast.io/publisher": "false"}, False),
                     ({"shardcast.io/prometheus": "yes"}, False)):
        assert not admits(policy, CONTAINER, admin, ns, same, gateway), f"port {admin} admitted from {ns}"
    # Every container port is named by a rule: a port the policy forgets is closed.
    ruled = {names for rule in policy["spec"]["ingress"] for names in
             (ports.get(p["port"], p["port"]) for p in rule["ports"])}
    assert ruled == set(ports.values())
    # Egress stays open (Redis, DNS).
    assert policy["spec"]["policyTypes"] == ["Ingress"]


def test_network_policy_labels_are_documented():
    """The namespace labels an operator must set are the ones deploy/README.md
    tells them to set."""
    readme = (DEPLOY / "README.md").read_text()
    for labels in (PUBLISHER_NS, PROMETHEUS_NS):
        for key, value in labels.items():
            assert f"{key}={value}" in readme, f"deploy/README.md does not say to set {key}={value}"


def test_network_policy_does_not_select_redis():
    """The dev Redis is reached by the gateways on its own port: the gateway
    policy must not select it."""
    dev = rendered("overlays/dev")
    policy = by_kind(dev, "NetworkPolicy", "shardcast")
    redis = by_kind(dev, "Deployment", "shardcast-redis")["spec"]["template"]["metadata"]["labels"]
    assert not selects(policy["spec"]["podSelector"], redis)
    # The dev namespace is a publisher namespace: its own pods may publish.
    ns = by_kind(dev, "Namespace", "shardcast-dev")["metadata"]["labels"]
    c = next(c for c in by_kind(dev, "Deployment", "shardcast")["spec"]["template"]["spec"]["containers"]
             if c["name"] == "shardcast")
    assert admits(policy, c, 8001, ns, True)


# ---------------------------------------------------------------------------
# The publish API key.

def api_key_ref(objs: list[dict]) -> dict:
    gw = by_kind(objs, "Deployment", "shardcast")
    c = next(c for c in gw["spec"]["template"]["spec"]["containers"] if c["name"] == "shardcast")
    return next(e for e in c["env"] if e["name"] == "SHARDCAST_API_KEY")["valueFrom"]["secretKeyRef"]


def test_api_key_is_required():
    """The base will not start a pod without the API key Secret: an open
    publish API is one label away from every namespace."""
    ref = api_key_ref(BASE)
    assert (ref["name"], ref["key"]) == ("shardcast-api-key", "api-key")
    assert ref.get("optional", False) is False
    # No Secret in the base is optional.
    optional = [e["name"] for e in CONTAINER["env"]
                if e.get("valueFrom", {}).get("secretKeyRef", {}).get("optional")]
    assert not optional, f"optional Secrets in the base: {optional}"
    assert api_key_ref(rendered("")) == ref


def test_dev_overlay_makes_the_api_key_optional():
    ref = api_key_ref(rendered("overlays/dev"))
    assert (ref["name"], ref["key"], ref.get("optional")) == ("shardcast-api-key", "api-key", True)


# ---------------------------------------------------------------------------
# The HPA's connections metric: the adapter configuration comes with the overlays.

def test_components_are_kustomize_components():
    for kfile in sorted((K8S / "components").glob("*/kustomization.yaml")):
        spec = yaml.safe_load(kfile.read_text())
        assert (spec["apiVersion"], spec["kind"]) == ("kustomize.config.k8s.io/v1alpha1", "Component"), kfile


@pytest.mark.parametrize("target", ["", "overlays/dev"], ids=["k8s", "overlays/dev"])
def test_adapter_rules_come_with_the_overlays(target):
    """`kubectl apply -k` of either overlay ships the prometheus-adapter
    configuration that serves the HPA's pods metric: the rule file, verbatim,
    as config.yaml of a ConfigMap in the adapter's namespace."""
    objs = rendered(target)
    cm = by_kind(objs, "ConfigMap", ADAPTER_CONFIG)
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["data"] == {"config.yaml": ADAPTER_RULES.read_text()}
    produced = {r["name"]["as"] for r in yaml.safe_load(cm["data"]["config.yaml"])["rules"]}
    hpa = by_kind(objs, "HorizontalPodAutoscaler")
    wanted = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    assert wanted and wanted <= produced, f"HPA metrics {wanted}, adapter serves {produced}"
    # The gateway's namespace comes from the adapter rule's labels, whatever it is.
    rule = yaml.safe_load(cm["data"]["config.yaml"])["rules"][0]
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"},
                                              "pod": {"resource": "pod"}}


def test_base_alone_has_no_adapter_config():
    """The component is what adds it (base/ stays applicable on its own)."""
    assert not [o for o in BASE if o["kind"] == "ConfigMap"]
