"""Materialize the GitOps repository the way `ctpipe gitops init` does (seed gitops/ + one values file per model
spec) and write every environment's values file twice: as it is, and as a promotion leaves it (model image
pinned by digest). Used by .github/workflows/gitops.yml for helm lint/template + kubeconform.

    python .github/workflows/scripts/gitops_values.py OUT     ->  OUT/gitops/ (work tree), OUT/values/*.yaml
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from ruamel.yaml import YAML  # noqa: E402

from ct_pipeline.adapters.git_local import init_local_remote  # noqa: E402
from ct_pipeline.domain.manifest import bump  # noqa: E402
from ct_pipeline.domain.records import BentoRef  # noqa: E402
from ct_pipeline.domain.spec import discover_specs, load_spec  # noqa: E402
from ct_pipeline.settings import load_settings  # noqa: E402


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    specs = [load_spec(p) for p in discover_specs(ROOT / "models")]
    settings = load_settings(paths={"home": out / "home"}, gitops={"remote": str(out / "gitops.git")})
    remote = init_local_remote(settings, specs)
    subprocess.run(["git", "clone", "--quiet", remote, str(out / "gitops")], check=True)
    values_dir = out / "values"
    values_dir.mkdir(exist_ok=True)
    for path in sorted((out / "gitops" / "apps").glob("*/*/values.yaml")):
        env, model = path.parts[-3], path.parts[-2]
        text = path.read_text()
        name = YAML(typ="safe").load(text)["model"]["name"]
        promoted = bump(
            text,
            BentoRef(
                model=name,
                version="7",
                run_id="0123456789abcdef0123456789abcdef",
                bento_tag=f"{name}-service:ci",
                bento_model_tag=f"{name}:ci",
                data_hash="ci",
                image_repository=f"ghcr.io/ct-pipeline/{name}",
                image_tag="v7",
                image_digest="sha256:" + "0" * 64,
            ),
        )
        (values_dir / f"{env}-{model}.yaml").write_text(text)
        (values_dir / f"{env}-{model}-promoted.yaml").write_text(promoted)
        print(f"{env}/{model}: {values_dir / f'{env}-{model}.yaml'} (+ -promoted)")


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve())
