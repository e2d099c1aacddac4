"""A small kustomize renderer for the subset deploy/k8s uses, for machines
without kubectl/kustomize: `resources` (files and directories), `components`,
`patches` (strategic-merge patch files), `namespace`, and `configMapGenerator`
with files and a fixed name (`options.disableNameSuffixHash: true`).

When kubectl is available, deploy/tests/test_k8s.py renders with
`kubectl kustomize` as well and checks both give the same objects, so this file
cannot silently drift from the real tool. Anything outside the subset is an
error, not a guess.

    python3 deploy/tests/kustomize_lite.py deploy/k8s/overlays/dev
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import yaml

SUPPORTED = {"apiVersion", "kind", "resources", "components", "patches", "namespace",
             "configMapGenerator"}
# Kinds that have no namespace (of the ones this project uses).
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


class Unsupported(Exception):
    pass


def _load_docs(path: Path) -> list[dict]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d]


def _key(obj: dict) -> tuple:
    return (obj.get("apiVersion", "").split("/")[0] if "/" in obj.get("apiVersion", "") else "",
            obj["kind"], obj["metadata"]["name"])


def merge(base, patch):
    """Strategic merge as kustomize applies it to the fields used here: maps
    merge recursively; lists of maps with a `name` merge item by item (patch
    items first, then the base's other items, as kustomize orders them); any
    other list or scalar is replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = merge(out[k], v)
            else:
                out[k] = copy.deepcopy(v)
        return out
    if (isinstance(base, list) and isinstance(patch, list) and base and patch
            and all(isinstance(i, dict) and "name" in i for i in base + patch)):
        by_name = {i["name"]: i for i in base}
        out = []
        for item in patch:
            out.append(merge(by_name[item["name"]], item) if item["name"] in by_name
                       else copy.deepcopy(item))
        patched = {i["name"] for i in patch}
        out.extend(copy.deepcopy(i) for i in base if i["name"] not in patched)
        return out
    return copy.deepcopy(patch)


def render(directory: str | Path, _kind: str = "Kustomization") -> list[dict]:
    directory = Path(directory)
    kfile = directory / "kustomization.yaml"
    spec = yaml.safe_load(kfile.read_text())
    extra = set(spec) - SUPPORTED
    if extra:
        raise Unsupported(f"{kfile}: fields outside the supported subset: {sorted(extra)}")
    if spec.get("kind", "Kustomization") != _kind:
        raise Unsupported(f"{kfile}: expected kind {_kind}, found {spec.get('kind')}")
    objects: list[dict] = []
    for res in spec.get("resources", []):
        target = (directory / res).resolve()
        if target.is_dir():
            objects.extend(render(target))
        else:
            objects.extend(_load_docs(target))
    objects.extend(_generate_config_maps(directory, spec.get("configMapGenerator", [])))
    for comp in spec.get("components", []):
        objects = _apply_component((directory / comp).resolve(), objects)
    objects = _apply_patches(directory, spec.get("patches", []), objects)
    if "namespace" in spec:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj.setdefault("metadata", {})["namespace"] = spec["namespace"]
    seen = set()
    for obj in objects:
        k = _key(obj) + (obj["metadata"].get("namespace"),)
        if k in seen:
            raise Unsupported(f"duplicate object {k}")
        seen.add(k)
    return objects


def _apply_component(directory: Path, objects: list[dict]) -> list[dict]:
    kfile = directory / "kustomization.yaml"
    spec = yaml.safe_load(kfile.read_text())
    if spec.get("kind") != "Component":
        raise Unsupported(f"{kfile}: a component must have kind Component")
    extra = set(spec) - SUPPORTED - {"namespace"}
    if extra or "namespace" in spec or "components" in spec:
        raise Unsupported(f"{kfile}: fields outside the supported subset")
    objects = list(objects)
    for res in spec.get("resources", []):
        objects.extend(_load_docs(directory / res))
    objects.extend(_generate_config_maps(directory, spec.get("configMapGenerator", [])))
    return _apply_patches(directory, spec.get("patches", []), objects)


def _generate_config_maps(directory: Path, generators: list) -> list[dict]:
    """ConfigMaps from `configMapGenerator` entries with `files` (KEY=PATH or
    PATH) and a fixed name: kustomize's name hash is not reproduced here."""
    out = []
    for gen in generators:
        extra = set(gen) - {"name", "namespace", "files", "options"}
        options = gen.get("options", {})
        if extra or set(options) - {"disableNameSuffixHash", "labels"}:
            raise Unsupported(f"configMapGenerator fields outside the supported subset: {gen}")
        if options.get("disableNameSuffixHash") is not True:
            raise Unsupported(f"configMapGenerator {gen['name']}: needs options.disableNameSuffixHash: true")
        data = {}
        for entry in gen.get("files", []):
            key, _, path = entry.rpartition("=")
            data[key or Path(path).name] = (directory / path).read_text()
        metadata = {"name": gen["name"]}
        if "namespace" in gen:
            metadata["namespace"] = gen["namespace"]
        if options.get("labels"):
            metadata["labels"] = dict(options["labels"])
        out.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data})
    return out


def _apply_patches(directory: Path, patches: list, objects: list[dict]) -> list[dict]:
    for p in patches:
        if set(p) != {"path"}:
            raise Unsupported(f"only `patches: - path: FILE` is supported, found {p}")
        for patch in _load_docs(directory / p["path"]):
            matches = [i for i, o in enumerate(objects)
                       if o["kind"] == patch["kind"]
                       and o["metadata"]["name"] == patch["metadata"]["name"]]
            if len(matches) != 1:
                raise Unsupported(f"patch {p['path']} matches {len(matches)} objects")
            objects[matches[0]] = merge(objects[matches[0]], patch)
    return objects


def normalize(obj):
    """Order-insensitive form for comparing renderings: lists of named maps are
    sorted by name, maps by key."""
    if isinstance(obj, dict):
        return {k: normalize(v) for k, v in sorted(obj.items())}
    if isinstance(obj, list):
        items = [normalize(i) for i in obj]
        if items and all(isinstance(i, dict) and "name" in i for i in items):
            items.sort(key=lambda i: str(i["name"]))
        return items
    return obj


if __name__ == "__main__":
    yaml.safe_dump_all(render(sys.argv[1] if len(sys.argv) > 1 else "."), sys.stdout,
                       sort_keys=False)
