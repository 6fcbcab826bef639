"""An OCI distribution registry through its HTTP API (v2): digests, manifests and labels of pushed images.

The digest is the registry's ``Docker-Content-Digest`` of the manifest (docker-py's get_registry_data does not
work against podman's socket, so it is read here).
"""

from __future__ import annotations

from ct_pipeline.errors import ImageError

MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)


class Registry:
    """The registry HTTP API (v2 / OCI distribution), anonymous access: digests and labels of tags."""

    def __init__(self, host: str, insecure: bool | None = None, timeout: float = 30.0) -> None:
        import httpx

        self.host = host.strip("/")
        hostname = self.host.rsplit(":", 1)[0].strip("[]")
        if insecure is None:
            insecure = hostname in ("localhost", "::1") or hostname.startswith("127.")
        self.insecure = insecure
        self.base_url = f"{'http' if insecure else 'https'}://{self.host}"
        self._client = httpx.Client(base_url=self.base_url, timeout=timeout, follow_redirects=True)

    def close(self) -> None:
        self._client.close()

    def _get(self, method: str, path: str, accept: tuple[str, ...] = ()):
        import httpx

        headers = {"Accept": ", ".join(accept)} if accept else {}
        try:
            return self._client.request(method, path, headers=headers)
        except httpx.HTTPError as exc:
            raise ImageError(f"registry {self.base_url} is not reachable: {exc}") from None

    def check(self) -> None:
        resp = self._get("GET", "/v2/")
        if resp.status_code == 401:
            raise ImageError(f"registry {self.base_url} wants authentication, which ct-pipeline does not do yet")
        if resp.status_code != 200:
            raise ImageError(f"registry {self.base_url}/v2/ answered {resp.status_code}, not a registry API?")

    @staticmethod
    def _name(repository: str) -> str:
        host, _, name = repository.partition("/")
        return name

    def digest(self, repository: str, reference: str) -> str | None:
        """``Docker-Content-Digest`` of ``HEAD /v2/<name>/manifests/<reference>`` (None when absent)."""
        resp = self._get("HEAD", f"/v2/{self._name(repository)}/manifests/{reference}", MANIFEST_TYPES + INDEX_TYPES)
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise ImageError(f"registry HEAD {repository}:{reference} answered {resp.status_code}")
        digest = resp.headers.get("Docker-Content-Digest")
        if not digest or not digest.startswith("sha256:"):
            raise ImageError(f"registry gave no Docker-Content-Digest for {repository}:{reference}")
        return digest

    def manifest(self, repository: str, reference: str) -> dict | None:
        """The image manifest of a tag or digest (for an index: its linux/amd64 image), None when absent."""
        name = self._name(repository)
        resp = self._get("GET", f"/v2/{name}/manifests/{reference}", MANIFEST_TYPES + INDEX_TYPES)
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise ImageError(f"registry GET manifest {repository}:{reference} answered {resp.status_code}")
        doc = resp.json()
        if doc.get("mediaType") in INDEX_TYPES or "manifests" in doc:
            entries = doc.get("manifests") or []
            pick = next(
                (m for m in entries if (m.get("platform") or {}).get("architecture") in ("amd64", None)),
                entries[0] if entries else None,
            )
            return self.manifest(repository, pick["digest"]) if pick else None
        return doc

    def config(self, repository: str, reference: str) -> dict | None:
        """The image config (``config.Labels``, ``config.User``, ...) of a tag or digest, None when absent."""
        manifest = self.manifest(repository, reference)
        if manifest is None:
            return None
        digest = (manifest.get("config") or {}).get("digest")
        if not digest:
            raise ImageError(f"manifest of {repository}:{reference} has no config")
        resp = self._get("GET", f"/v2/{self._name(repository)}/blobs/{digest}")
        if resp.status_code != 200:
            raise ImageError(f"registry GET config blob of {repository}:{reference} answered {resp.status_code}")
        return resp.json()

    def labels(self, repository: str, reference: str) -> dict[str, str] | None:
        config = self.config(repository, reference)
        if config is None:
            return None
        return dict((config.get("config") or {}).get("Labels") or {})
