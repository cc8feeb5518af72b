"""The names of the images we build, in one place that needs only the standard library.

`make images` reads them before any virtualenv exists (`python3 scripts/images.py tag component`);
the settings take the component image's name from here, so the compiled pipeline and the build agree.
"""

REGISTRY = "ghcr.io/edgeops"
VERSION = "0.1.0"  # the edgeops package's version (pyproject.toml)
MLFLOW_VERSION = "3.17.2"  # the MLflow server the chart deploys; uv.lock pins the same

COMPONENT_IMAGE = f"{REGISTRY}/edgeops:{VERSION}"
MLFLOW_IMAGE = f"{REGISTRY}/mlflow:{MLFLOW_VERSION}"
# The public Python base for users, and its stand-in built here from Debian packages (`make base-image`).
PUBLIC_PYTHON_IMAGE = "python:3.11.13-slim-bookworm"
LOCAL_PYTHON_IMAGE = "edgeops/python:3.11-bookworm"
