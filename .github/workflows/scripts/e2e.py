"""Helpers of the kind + Flux end-to-end job (.github/workflows/e2e-kind.yml).

seed           GitOps repository for the cluster: `ctpipe gitops init` layout in <root>/<owner>/<name>.git (served
               by tests/support/github_standin.py), then one commit that wires it to this cluster, i.e. what
               `flux bootstrap` and a team's own registry settings would write: the GitRepository URL, the
               chart's OCI registry (plain HTTP here) and the gateway image.
publish-image  containerize the Bento of the newest open promotion, push it, and update the promotion so the
               values file pins the model server image by digest (what issue 4's packaging step will do).
wait-version   poll the gateway until it serves the given model version, then predict once.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))


def sh(*cmd: str, cwd: Path | None = None) -> str:
    print("$", " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def yaml_rt():
    from ruamel.yaml import YAML

    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096
    return yaml


def edit_yaml(path: Path, change) -> None:
    yaml = yaml_rt()
    docs = list(yaml.load_all(path.read_text()))
    for doc in docs:
        if doc:
            change(doc)
    out = io.StringIO()
    yaml.dump_all(docs, out)
    path.write_text(out.getvalue())


def seed(args) -> None:
    from ct_pipeline.adapters.git_local import init_local_remote
    from ct_pipeline.domain.spec import discover_specs, load_spec
    from ct_pipeline.settings import load_settings

    bare = Path(args.root) / f"{args.repo}.git"
    specs = [load_spec(p) for p in discover_specs(ROOT / "models")]
    with tempfile.TemporaryDirectory() as tmp:
        init_local_remote(load_settings(paths={"home": Path(tmp) / "home"}, gitops={"remote": str(bare)}), specs)
        work = Path(tmp) / "work"
        sh("git", "clone", "--quiet", str(bare), str(work))

        def git_repository(doc):
            if doc.get("kind") == "GitRepository":
                doc["spec"]["url"] = args.git_url
                doc["spec"].pop("secretRef", None)  # the stand-in serves clones anonymously

        def chart_source(doc):
            if doc.get("kind") == "OCIRepository":
                doc["spec"]["url"] = args.chart_url
                doc["spec"]["insecure"] = True  # the job's registry speaks plain HTTP

        edit_yaml(work / "clusters" / args.env / "flux-system" / "gotk-sync.yaml", git_repository)
        edit_yaml(work / "apps" / "base" / "ct-serving" / "chart-source.yaml", chart_source)
        repository, _, digest = args.gateway_image.partition("@")
        for values in (work / "apps" / args.env).glob("*/values.yaml"):
            text = values.read_text()
            if "\ngateway:\n" in text and "  image:" not in text.split("\ngateway:\n", 1)[1]:
                text = text.replace(
                    "\ngateway:\n",
                    f'\ngateway:\n  image:\n    repository: {repository}\n    tag: e2e\n    digest: "{digest}"\n',
                    1,
                )
                values.write_text(text)
        cfg = ["-c", "user.name=e2e", "-c", "user.email=e2e@localhost"]
        sh(
            "git",
            *cfg,
            "commit",
            "-qam",
            "Wire the e2e cluster (bootstrap URL, chart registry, gateway image)",
            cwd=work,
        )
        sh("git", "push", "-q", "origin", "HEAD:main", cwd=work)
    print(f"seeded {bare}")


def publish_image(args) -> None:
    from ct_pipeline.adapters.publishers import publisher_for
    from ct_pipeline.domain.manifest import bump
    from ct_pipeline.domain.promotion import body_path, parse_record_file, promotion_files, record_path
    from ct_pipeline.domain.records import BentoRef
    from ct_pipeline.domain.spec import find_spec
    from ct_pipeline.settings import load_settings

    settings = load_settings()
    spec = find_spec(settings.paths.models_dir, args.model)
    publisher = publisher_for(settings, spec)
    open_ = [p for p in publisher.list_promotions(spec.name) if p.status == "open"]
    if not open_:
        sys.exit(f"no open promotion of {spec.name}")
    record = open_[-1]
    record_file = publisher.read_file(record_path(record.id), ref=record.commit)
    stored, doc = parse_record_file(record_file)
    bento = BentoRef.model_validate(doc["bento"])
    image = f"{args.registry}/{spec.name}:v{bento.version}"
    sh("bentoml", "containerize", bento.bento_tag, "-t", image)
    sh("docker", "push", "--quiet", image)
    digest = sh("docker", "inspect", "--format", "{{index .RepoDigests 0}}", image).split("@", 1)[1]
    bento = bento.model_copy(
        update={"image_repository": image.rsplit(":", 1)[0], "image_tag": f"v{bento.version}", "image_digest": digest}
    )
    base_text = publisher.read_file(spec.manifest_path)
    doc["bento"] = bento.model_dump(mode="json")
    attachments = {k: v for k, v in doc.items() if k not in ("format", "promotion")}
    files = {spec.manifest_path: bump(base_text, bento).encode(), **promotion_files(stored, **attachments)}
    files[body_path(record.id)] = publisher.read_file(body_path(record.id), ref=record.commit).encode()
    updated = publisher.open_promotion(stored.model_copy(update={"base_branch": publisher.base_branch}), files)
    print(f"{updated.id}: {image}@{digest} ({updated.url})")


def wait_version(args) -> None:
    deadline = time.time() + args.timeout
    last = None
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{args.url}/metadata", timeout=5) as resp:
                meta = json.load(resp)
            last = meta.get("version")
            if str(last) == args.version:
                row = {f: 0 for f in meta["features"]}
                req = urllib.request.Request(
                    f"{args.url}/predict",
                    data=json.dumps({"rows": [row]}).encode(),
                    headers={"Content-Type": "application/json"},
                )
                with urllib.request.urlopen(req, timeout=10) as resp:
                    body = json.load(resp)
                print(json.dumps(body))
                if str(body["version"]) != args.version:
                    sys.exit(f"predicted by version {body['version']}, expected {args.version}")
                return
        except Exception as exc:  # not up yet
            last = repr(exc)
        time.sleep(3)
    sys.exit(f"the gateway at {args.url} did not serve version {args.version} (last: {last})")


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("seed")
    p.add_argument("--root", required=True)
    p.add_argument("--repo", required=True)
    p.add_argument("--env", default="staging")
    p.add_argument("--git-url", required=True)
    p.add_argument("--chart-url", required=True)
    p.add_argument("--gateway-image", required=True, help="repository@sha256:...")
    p.set_defaults(fn=seed)
    p = sub.add_parser("publish-image")
    p.add_argument("--model", required=True)
    p.add_argument("--registry", required=True)
    p.set_defaults(fn=publish_image)
    p = sub.add_parser("wait-version")
    p.add_argument("--url", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--timeout", type=float, default=600)
    p.set_defaults(fn=wait_version)
    args = ap.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
