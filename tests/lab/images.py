"""Images the lab builds itself, since nothing can be pulled here."""

from __future__ import annotations

import hashlib
import secrets
import shlex
import shutil
from pathlib import Path

from .commands import run_local
from .errors import LabError
from .host import LabHost

REGISTRY_BINARY = Path("/usr/bin/docker-registry")
REGISTRY_TAG = "registry:2"

# Same storage and listen address as the official image, so REGISTRY_* variables
# given to `docker run` behave as documented for it.
REGISTRY_CONFIG = """\
version: 0.1
log:
  fields:
    service: registry
storage:
  filesystem:
    rootdirectory: /var/lib/registry
  cache:
    blobdescriptor: inmemory
http:
  addr: :5000
  headers:
    X-Content-Type-Options: [nosniff]
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
"""

REGISTRY_DOCKERFILE = """\
FROM scratch
COPY rootfs/ /
EXPOSE 5000
VOLUME ["/var/lib/registry"]
ENTRYPOINT ["/bin/registry"]
CMD ["serve", "/etc/docker/registry/config.yml"]
"""


def shared_libraries(binary: Path) -> list[Path]:
    """Paths the dynamic loader will look for, as ldd names them."""
    output = run_local(["ldd", str(binary)]).stdout
    libraries = []
    for line in output.split("\n"):
        # "libc.so.6 => /lib/.../libc.so.6 (0x..)" or "/lib64/ld-linux-... (0x..)"
        path = line.split("=>")[-1].strip().split(" (")[0].strip()
        if path.startswith("/"):
            libraries.append(Path(path))
    if not libraries:
        raise LabError(f"ldd found no libraries for {binary}; is it static now?")
    return libraries


def _recipe_digest(binary: Path, libraries: list[Path]) -> str:
    recipe = hashlib.sha256()
    for part in (REGISTRY_CONFIG, REGISTRY_DOCKERFILE, str(binary.stat().st_size)):
        recipe.update(part.encode())
    for library in libraries:
        recipe.update(f"{library}:{library.resolve().stat().st_size}".encode())
    return recipe.hexdigest()


def _write_context(context: Path, binary: Path, libraries: list[Path]) -> None:
    shutil.rmtree(context, ignore_errors=True)
    rootfs = context / "rootfs"
    for source, inside in [(binary, Path("/bin/registry"))] + [
        (library, library) for library in libraries
    ]:
        target = rootfs / inside.relative_to("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        # Resolve symlinks: the image gets real files at the paths ldd printed.
        shutil.copy2(source.resolve(), target)
    config = rootfs / "etc/docker/registry/config.yml"
    config.parent.mkdir(parents=True)
    config.write_text(REGISTRY_CONFIG)
    (rootfs / "var/lib/registry").mkdir(parents=True)
    (context / "Dockerfile").write_text(REGISTRY_DOCKERFILE)


def _image_id(host: LabHost, reference: str) -> str | None:
    result = host.run(
        f"docker image inspect --format '{{{{.Id}}}}' {shlex.quote(reference)}",
        check=False,
    )
    return result.stdout.strip() if result.returncode == 0 else None


def registry_archive(images: Path, builder: LabHost) -> Path:
    """Return a cached `docker save` of registry:2, building it on builder if stale."""
    binary = REGISTRY_BINARY
    if not binary.exists():
        raise LabError(f"{binary} is missing; apt-get install docker-registry")
    libraries = shared_libraries(binary)
    archive, recipe_file = images / "registry-2.tar", images / "registry-2.recipe"
    digest = _recipe_digest(binary, libraries)
    fresh = (
        archive.exists()
        and recipe_file.exists()
        and recipe_file.read_text() == digest
        and archive.stat().st_mtime >= binary.stat().st_mtime
    )
    if fresh:
        return archive

    context = images / "registry-build"
    _write_context(context, binary, libraries)
    partial = archive.with_suffix(".tar.partial")
    previous = _image_id(builder, REGISTRY_TAG)
    built = host_build(builder, context, REGISTRY_TAG)
    try:
        builder.run(f"docker save -o {shlex.quote(str(partial))} {REGISTRY_TAG}")
    finally:
        # Hosts must start without registry:2 so tests can check a task loads it;
        # a registry:2 the builder had before is put back.
        if previous != built:
            builder.run(f"docker rmi {REGISTRY_TAG}", check=False)
            if previous is not None:
                builder.run(f"docker tag {previous} {REGISTRY_TAG}", check=False)
    partial.replace(archive)
    recipe_file.write_text(digest)
    shutil.rmtree(context, ignore_errors=True)
    return archive


def host_build(host: LabHost, context: Path, tag: str) -> str:
    """Build context on host with the legacy builder; return the image id."""
    result = host.run(
        f"DOCKER_BUILDKIT=0 docker build --quiet --tag {shlex.quote(tag)}"
        f" {shlex.quote(str(context))}",
        timeout=300,
    )
    return result.stdout.strip().splitlines()[-1]


def build_test_image(host: LabHost, tag: str) -> str:
    """Build a one-file image; random content makes each call a new digest."""
    if not host.docker:
        raise LabError(f"host {host.name} has no docker to build {tag} with")
    payload = f"lab test image {tag}: {secrets.token_hex(16)}\n"
    dockerfile = "FROM scratch\nCOPY payload.txt /payload.txt\n"
    # The context lives in the host's private /tmp and goes away with the build.
    script = (
        "set -eu\n"
        "context=$(mktemp -d)\n"
        "trap 'rm -rf \"$context\"' EXIT\n"
        f'printf %s {shlex.quote(payload)} >"$context/payload.txt"\n'
        f'printf %s {shlex.quote(dockerfile)} >"$context/Dockerfile"\n'
        f"DOCKER_BUILDKIT=0 docker build --quiet --tag {shlex.quote(tag)}"
        ' "$context"\n'
    )
    result = host.run(script, timeout=300)
    return result.stdout.strip().splitlines()[-1]
