#!/usr/bin/env bash
# Deploy the embq embedding queue workers to Kubernetes.
#
# Steps: check prerequisites (kubectl, cluster, required Secrets) -> render the
# environment's kustomize overlay and the migrate Job with the workers' image ->
# validate them (server-side dry run) -> run the migrate Job and wait for it ->
# apply -> wait for every Deployment's rollout -> check that the workers are Ready.
# Run with --help for the options and exit codes.
set -euo pipefail

readonly EXIT_USAGE=2
readonly EXIT_PREREQ=3
readonly EXIT_CLUSTER=4
readonly EXIT_SECRETS=5
readonly EXIT_VALIDATION=6
readonly EXIT_APPLY=7
readonly EXIT_ROLLOUT=8
readonly EXIT_HEALTH=9
readonly EXIT_MIGRATE=10
readonly EXIT_CANARY=11

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR
readonly OVERLAYS_DIR="${EMBQ_OVERLAYS_DIR:-$SCRIPT_DIR/../kubernetes/overlays}"
readonly MIGRATE_DIR="${EMBQ_MIGRATE_DIR:-$SCRIPT_DIR/../kubernetes/jobs/migrate}"
readonly MIGRATE_JOB="embq-migrate"
readonly MIGRATE_TIMEOUT="${MIGRATE_TIMEOUT:-600s}"
readonly MIGRATE_POLL_INTERVAL="${MIGRATE_POLL_INTERVAL:-2}"
readonly KUBECTL="${KUBECTL:-kubectl}"
readonly ROLLOUT_TIMEOUT="${ROLLOUT_TIMEOUT:-600s}"
readonly REQUEST_TIMEOUT="${REQUEST_TIMEOUT:-15s}"
readonly WORKER_SELECTOR="app=embedding-queue-worker"
readonly IMAGE_PLACEHOLDER="registry.example.com/"
# Canary judgement (--environment canary): how long to watch, the error-ratio
# margin the canary may exceed the stable pods by, and the attempts it needs.
readonly CANARY_DURATION="${CANARY_DURATION:-600s}"
readonly CANARY_MAX_EXCESS="${CANARY_MAX_EXCESS:-0.02}"
readonly CANARY_MIN_ATTEMPTS="${CANARY_MIN_ATTEMPTS:-20}"
readonly METRICS_PORT="${METRICS_PORT:-9091}"

# "secret:key" pairs the workers cannot run without (the key must be present).
readonly REQUIRED_SECRETS=(
  "supabase-secrets:database-url"
  "ai-secrets:"
  "embq-shutdown-token:token"
)

environment="production"
namespace=""
image=""
controller_image=""
dry_run=false
force=false
skip_validation=false
prune=true
# The worker Deployment the overlay renders (the canary's has a suffix).
worker_deployment="embedding-queue-workers"
canary_base="production"
cluster_available=false
workdir=""

usage() {
  cat <<'EOF'
Usage: deploy-workers.sh [options]

Deploy the embq embedding queue workers with the kustomize overlay of an
environment, then wait for the rollout and check the workers' health.

Options:
  --environment ENV  production (default), production-keda, staging or canary;
                     selects deploy/kubernetes/overlays/ENV. canary deploys
                     the candidate beside the stable fleet, compares its job
                     error ratio with the stable pods' for CANARY_DURATION,
                     then promotes it (deploys the image with --canary-base)
                     or rolls it back (deletes the canary), exit 11
  --canary-base ENV  the fleet a canary is promoted into: production or
                     production-keda (default: production)
  --no-prune         keep objects that left the manifests (default: prune
                     them: kubectl apply --prune with the ApplySet
                     configmap/embq-applyset; never for canary)
  --namespace NS     deploy into NS instead of the environment's namespace
                     (production: paperless-maverick,
                     staging: paperless-maverick-staging)
  --image IMAGE      worker image: a tag (1.4.2), a full reference
                     (registry/embq:1.4.2) or a digest (registry/embq@sha256:...).
                     The restart controller's image follows: same registry
                     path with embq-controller, same tag
  --controller-image IMAGE
                     restart controller image, if it does not follow --image
  --dry-run          render and validate only; with a reachable cluster also
                     run `kubectl apply --dry-run=server`. Prints the rendered
                     manifests on stdout. Nothing is changed.
  --force            deploy even if required Secrets are missing or the image
                     is still the placeholder registry
  --skip-validation  skip the server-side dry run before applying
  -h, --help         show this help

Environment:
  KUBECTL            kubectl binary to use (default: kubectl)
  ROLLOUT_TIMEOUT    how long to wait for each rollout (default: 600s)
  MIGRATE_TIMEOUT    how long to wait for the migrate Job (default: 600s)
  REQUEST_TIMEOUT    timeout of single API requests (default: 15s)
  CANARY_DURATION    how long to watch a canary (default: 600s)
  CANARY_MAX_EXCESS  error ratio the canary may exceed the stable pods' by
                     (default: 0.02)
  CANARY_MIN_ATTEMPTS  job attempts the canary needs to be judged (default: 20)

Required Secrets in the target namespace (see deploy/README.md):
  supabase-secrets (key database-url), ai-secrets, embq-shutdown-token (key token)

Exit codes:
  0 deployed (or dry run passed)   5 required Secret missing
  1 unexpected error               6 rendering or validation failed
  2 bad usage                      7 kubectl apply failed
  3 kubectl not found              8 rollout failed or timed out
  4 cluster not reachable          9 workers not healthy after the rollout
                                  10 the migrate Job failed or timed out
                                     (nothing was applied to the workers)
  11 canary rolled back (its error ratio was too high, or it did too
     little work to judge)

Schema migrations: before anything is applied, the Job embq-migrate runs
`embq migrate` with the workers' image and the rollout waits for it. Rolling
back is deploying the previous image the same way: its migrate Job changes
nothing when every migration since is additive (the older workers run on the
newer schema), and fails, changing nothing, when one is breaking.
EOF
}

log() { printf '==> %s\n' "$*" >&2; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
  local code=$1
  shift
  printf 'error: %s\n' "$*" >&2
  exit "$code"
}

cleanup() {
  if [[ -n "$workdir" && -d "$workdir" ]]; then
    rm -rf -- "$workdir"
  fi
}
trap cleanup EXIT

need_value() {
  if [[ $# -lt 2 || -z "$2" || "$2" == --* ]]; then
    usage >&2
    die "$EXIT_USAGE" "$1 needs a value"
  fi
}

parse_args() {
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --environment)
        need_value "$@"
        environment=$2
        shift 2
        ;;
      --environment=*)
        environment=${1#*=}
        shift
        ;;
      --namespace)
        need_value "$@"
        namespace=$2
        shift 2
        ;;
      --namespace=*)
        namespace=${1#*=}
        shift
        ;;
      --image)
        need_value "$@"
        image=$2
        shift 2
        ;;
      --image=*)
        image=${1#*=}
        shift
        ;;
      --controller-image)
        need_value "$@"
        controller_image=$2
        shift 2
        ;;
      --controller-image=*)
        controller_image=${1#*=}
        shift
        ;;
      --dry-run)
        dry_run=true
        shift
        ;;
      --force)
        force=true
        shift
        ;;
      --skip-validation)
        skip_validation=true
        shift
        ;;
      --no-prune)
        prune=false
        shift
        ;;
      --canary-base)
        need_value "$@"
        canary_base=$2
        shift 2
        ;;
      --canary-base=*)
        canary_base=${1#*=}
        shift
        ;;
      -h | --help)
        usage
        exit 0
        ;;
      *)
        usage >&2
        die "$EXIT_USAGE" "unknown option: $1"
        ;;
    esac
  done

  case "$environment" in
    production | production-keda | canary) : "${namespace:=paperless-maverick}" ;;
    staging) : "${namespace:=paperless-maverick-staging}" ;;
    *) die "$EXIT_USAGE" "--environment must be production, production-keda, staging or canary, not '$environment'" ;;
  esac
  [[ "$environment" != canary ]] || worker_deployment="embedding-queue-workers-canary"
  case "$canary_base" in
    production | production-keda) ;;
    *) die "$EXIT_USAGE" "--canary-base must be production or production-keda, not '$canary_base'" ;;
  esac
  if [[ ! "$namespace" =~ ^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$ ]]; then
    die "$EXIT_USAGE" "--namespace '$namespace' is not a valid namespace name"
  fi
  local ref
  for ref in "$image" "$controller_image"; do
    if [[ -n "$ref" && ! "$ref" =~ ^[A-Za-z0-9][A-Za-z0-9._/:@-]*$ ]]; then
      die "$EXIT_USAGE" "'$ref' is not an image reference or tag"
    fi
  done
}

kube() {
  "$KUBECTL" --request-timeout="$REQUEST_TIMEOUT" "$@"
}

check_prerequisites() {
  if ! command -v "$KUBECTL" >/dev/null 2>&1; then
    die "$EXIT_PREREQ" "kubectl not found (looked for '$KUBECTL'); install it or set KUBECTL"
  fi
  log "checking the cluster"
  if kube get --raw /readyz >/dev/null 2>&1; then
    cluster_available=true
  elif [[ "$dry_run" == true ]]; then
    warn "cluster not reachable: rendering and validating offline only"
  else
    die "$EXIT_CLUSTER" "cluster not reachable with the current kubeconfig context ($("$KUBECTL" config current-context 2>/dev/null || echo none))"
  fi
}

check_secrets() {
  [[ "$cluster_available" == true ]] || return 0
  log "checking required Secrets in namespace $namespace"
  local missing=() entry name key value
  for entry in "${REQUIRED_SECRETS[@]}"; do
    name=${entry%%:*}
    key=${entry#*:}
    if ! kube get secret "$name" -n "$namespace" -o name >/dev/null 2>&1; then
      missing+=("secret $name")
      continue
    fi
    if [[ -n "$key" ]]; then
      value=$(kube get secret "$name" -n "$namespace" -o "jsonpath={.data.$key}" 2>/dev/null || true)
      if [[ -z "$value" ]]; then
        missing+=("key $key in secret $name")
      fi
    fi
  done
  if ! kube get configmap feature-flags-config -n "$namespace" -o name >/dev/null 2>&1; then
    warn "ConfigMap feature-flags-config not found in $namespace: the workers use their default flags"
  fi
  if [[ ${#missing[@]} -gt 0 ]]; then
    local list
    list=$(printf '%s, ' "${missing[@]}")
    list=${list%, }
    if [[ "$force" == true ]]; then
      warn "missing in $namespace: $list (continuing because of --force)"
    else
      die "$EXIT_SECRETS" "missing in $namespace: $list. Create them as shown in deploy/README.md (\"Secrets\"), or pass --force"
    fi
  fi
}

# Splits an image reference into "name tag digest" (empty parts as "-").
split_image() {
  local ref=$1 name="-" tag="-" digest="-"
  if [[ "$ref" == *@* ]]; then
    name=${ref%%@*}
    digest=${ref#*@}
  elif [[ "${ref##*/}" == *:* ]]; then
    name=${ref%:*}
    tag=${ref##*:}
  else
    name=$ref
  fi
  echo "$name $tag $digest"
}

# The image of the first container of Deployment $1 in the rendered manifests.
deployment_image() {
  awk -v want="$1" '
    /^---/ { kind = ""; name = ""; meta = 0; next }
    /^kind: / { kind = $2; next }
    /^metadata:/ { meta = 1; next }
    /^[^ ]/ { meta = 0 }
    meta && /^  name: / && name == "" { name = $2; next }
    kind == "Deployment" && name == want && /^ +image: / { print $2; exit }
  ' "$workdir/rendered.yaml"
}

# Prints one kustomize `images` entry replacing image name $1 with the
# reference or bare tag $2.
image_entry() {
  local current=$1 wanted=$2 name tag digest
  if [[ "$wanted" == */* || "$wanted" == *@* || "$wanted" == *:* ]]; then
    read -r name tag digest <<<"$(split_image "$wanted")"
  else
    name="-" tag=$wanted digest="-"
  fi
  printf '  - name: %s\n' "$current"
  [[ "$name" != "-" ]] && printf '    newName: %s\n' "$name"
  [[ "$tag" != "-" ]] && printf '    newTag: "%s"\n' "$tag"
  [[ "$digest" != "-" ]] && printf '    digest: %s\n' "$digest"
  return 0
}

write_kustomization() {
  local rel
  # kustomize accepts only relative paths to other kustomizations.
  rel=$(realpath --relative-to="$workdir" "$1")
  printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n'
  printf 'resources:\n  - %s\n' "$rel"
  printf 'namespace: %s\n' "$namespace"
  if [[ -n "$2" ]]; then
    printf 'images:\n%s' "$2"
  fi
}

kustomize_build() {
  if ! "$KUBECTL" kustomize "$workdir" >"$workdir/rendered.yaml" 2>"$workdir/render.err"; then
    cat "$workdir/render.err" >&2
    die "$EXIT_VALIDATION" "kustomize could not render $1"
  fi
}

# The controller image that goes with worker image $1: same registry path and
# tag, embq-controller instead of embq. Empty when that cannot be derived.
derived_controller_image() {
  local current=$1 wanted=$2 name tag digest
  if [[ "$wanted" != */* && "$wanted" != *@* && "$wanted" != *:* ]]; then
    echo "$wanted"
    return 0
  fi
  read -r name tag digest <<<"$(split_image "$wanted")"
  if [[ "$digest" != "-" || "${name##*/}" != "embq" ]]; then
    return 0
  fi
  local controller=${name%embq}embq-controller
  [[ "$tag" != "-" ]] && controller="$controller:$tag"
  [[ -n "$current" ]] && echo "$controller"
  return 0
}

render() {
  local overlay="$OVERLAYS_DIR/$environment"
  [[ -f "$overlay/kustomization.yaml" ]] || die "$EXIT_VALIDATION" "overlay not found: $overlay"
  workdir=$(mktemp -d "${TMPDIR:-/tmp}/deploy-workers.XXXXXX")

  log "rendering overlay $environment for namespace $namespace"
  write_kustomization "$overlay" "" >"$workdir/kustomization.yaml"
  kustomize_build "$overlay"
  if [[ -z "$(deployment_image "$worker_deployment")" ]]; then
    die "$EXIT_VALIDATION" "rendered manifests contain no $worker_deployment Deployment"
  fi

  # Image overrides apply to the names the overlay rendered, so render twice.
  if [[ -n "$image" || -n "$controller_image" ]]; then
    local entries="" worker_now controller_now wanted
    worker_now=$(deployment_image "$worker_deployment")
    controller_now=$(deployment_image worker-restart-controller)
    if [[ -n "$image" ]]; then
      entries+=$(image_entry "$(split_image "$worker_now" | cut -d' ' -f1)" "$image")$'\n'
    fi
    wanted=$controller_image
    if [[ -z "$wanted" && -n "$image" && -n "$controller_now" ]]; then
      wanted=$(derived_controller_image "$controller_now" "$image")
      [[ -n "$wanted" ]] || warn "cannot derive the controller image from $image; pass --controller-image"
    fi
    if [[ -n "$wanted" && -n "$controller_now" ]]; then
      entries+=$(image_entry "$(split_image "$controller_now" | cut -d' ' -f1)" "$wanted")$'\n'
    fi
    write_kustomization "$overlay" "$entries" >"$workdir/kustomization.yaml"
    kustomize_build "$overlay"
  fi

  local images
  images=$(grep -E '^ +image: ' "$workdir/rendered.yaml" | sed -E 's/^ +image: //' | sort -u)
  log "images: $(echo "$images" | tr '\n' ' ')"
  if grep -qF "$IMAGE_PLACEHOLDER" <<<"$images"; then
    if [[ "$dry_run" == true || "$force" == true ]]; then
      warn "an image still points at the placeholder registry; pass --image REGISTRY/embq:TAG"
    else
      die "$EXIT_VALIDATION" "an image still points at the placeholder registry ${IMAGE_PLACEHOLDER%/}; pass --image REGISTRY/embq:TAG (or --force)"
    fi
  fi
}

validate() {
  if [[ "$skip_validation" == true && "$dry_run" == false ]]; then
    warn "skipping validation (--skip-validation)"
    return 0
  fi
  if [[ "$cluster_available" == true ]]; then
    log "validating against the API server (kubectl apply --dry-run=server)"
    if ! kube apply --dry-run=server --validate=strict -f "$workdir/rendered.yaml" >"$workdir/validate.out" 2>&1; then
      cat "$workdir/validate.out" >&2
      die "$EXIT_VALIDATION" "the API server rejected the manifests"
    fi
    if ! kube apply --dry-run=server --validate=strict -f "$workdir/migrate.yaml" >"$workdir/validate.out" 2>&1; then
      cat "$workdir/validate.out" >&2
      die "$EXIT_VALIDATION" "the API server rejected the migrate Job"
    fi
  else
    log "no cluster: rendering succeeded; schemas are checked by scripts/validate-deploy.sh"
  fi
}

# A kustomization of the migrate Job at relative path $1 in the target
# namespace, with `images` entries $2 (if any).
migration_kustomization() {
  printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n'
  printf 'resources:\n  - %s\nnamespace: %s\n' "$1" "$namespace"
  if [[ -n "$2" ]]; then
    printf 'images:\n%s\n' "$2"
  fi
}

# The migrate Job, rendered for the target namespace with the workers' image, so
# the schema is migrated by the very release that is rolled out (or, on a
# rollback, checked by it).
render_migration() {
  [[ -f "$MIGRATE_DIR/kustomization.yaml" ]] || die "$EXIT_VALIDATION" "migrate Job not found: $MIGRATE_DIR"
  local dir="$workdir/migrate" rel worker job_image
  mkdir -p "$dir"
  rel=$(realpath --relative-to="$dir" "$MIGRATE_DIR")
  worker=$(deployment_image "$worker_deployment")
  migration_kustomization "$rel" "" >"$dir/kustomization.yaml"
  if ! "$KUBECTL" kustomize "$dir" >"$workdir/migrate.yaml" 2>"$workdir/render.err"; then
    cat "$workdir/render.err" >&2
    die "$EXIT_VALIDATION" "kustomize could not render $MIGRATE_DIR"
  fi
  job_image=$(awk '/^ +image: / { print $2; exit }' "$workdir/migrate.yaml")
  migration_kustomization "$rel" "$(image_entry "$(split_image "$job_image" | cut -d' ' -f1)" "$worker")" >"$dir/kustomization.yaml"
  if ! "$KUBECTL" kustomize "$dir" >"$workdir/migrate.yaml" 2>"$workdir/render.err"; then
    cat "$workdir/render.err" >&2
    die "$EXIT_VALIDATION" "kustomize could not render $MIGRATE_DIR with image $worker"
  fi
  job_image=$(awk '/^ +image: / { print $2; exit }' "$workdir/migrate.yaml")
  [[ "$job_image" == "$worker" ]] ||
    die "$EXIT_VALIDATION" "the migrate Job would run $job_image, not the workers' image $worker"
  log "migrate Job image: $job_image"
}

# Prints the migrate Job's conditions as "Type=Status ..." (empty while it runs).
migration_conditions() {
  kube get job "$MIGRATE_JOB" -n "$namespace" \
    -o 'jsonpath={range .status.conditions[*]}{.type}={.status}{" "}{end}' 2>/dev/null || true
}

migration_failed() {
  warn "the migration's log (kubectl logs job/$MIGRATE_JOB -n $namespace):"
  kube logs "job/$MIGRATE_JOB" -n "$namespace" --tail=30 >&2 2>/dev/null || true
  die "$EXIT_MIGRATE" "job/$MIGRATE_JOB $1; nothing was applied to the workers. If the log says a migration since this image is breaking, this image cannot run on the database's schema: deploy a release at least as new as the schema"
}

# Runs `embq migrate` as a Job with the workers' image and waits for it, so no
# worker of this release starts on a schema it cannot use.
run_migration() {
  local limit=${MIGRATE_TIMEOUT%s} conditions deadline
  [[ "$limit" =~ ^[0-9]+$ ]] || die "$EXIT_USAGE" "MIGRATE_TIMEOUT must be a number of seconds such as 600s, not '$MIGRATE_TIMEOUT'"
  log "migrating the schema: job/$MIGRATE_JOB (timeout $MIGRATE_TIMEOUT)"
  # A Job's pod template cannot change: the previous run's Job goes first.
  if ! kube delete job "$MIGRATE_JOB" -n "$namespace" --ignore-not-found --wait=true >/dev/null; then
    die "$EXIT_MIGRATE" "could not delete the previous job/$MIGRATE_JOB in $namespace"
  fi
  if ! kube apply -f "$workdir/migrate.yaml" >/dev/null; then
    die "$EXIT_MIGRATE" "could not create job/$MIGRATE_JOB in $namespace; nothing was applied to the workers"
  fi
  deadline=$((SECONDS + limit))
  while true; do
    conditions=" $(migration_conditions) "
    case "$conditions" in
      *" Complete=True "*)
        log "schema migrated"
        return 0
        ;;
      *" Failed=True "*) migration_failed "failed" ;;
    esac
    [[ $SECONDS -lt $deadline ]] || migration_failed "did not finish within $MIGRATE_TIMEOUT"
    sleep "$MIGRATE_POLL_INTERVAL"
  done
}

# Deployment names in the rendered manifests (kustomize prints one document per
# object with top-level keys in a fixed order).
rendered_deployments() {
  awk '
    /^---/ { if (kind == "Deployment" && name != "") print name; kind = ""; name = ""; meta = 0; next }
    /^kind: / { kind = $2; next }
    /^metadata:/ { meta = 1; next }
    /^[^ ]/ { meta = 0 }
    meta && /^  name: / && name == "" { name = $2 }
    END { if (kind == "Deployment" && name != "") print name }
  ' "$workdir/rendered.yaml"
}

# KEDA creates and owns an HPA for the workers; a plain HPA beside it would
# fight it for the replica count.
refuse_hpa_under_keda() {
  [[ "$cluster_available" == true ]] || return 0
  grep -q '^kind: HorizontalPodAutoscaler$' "$workdir/rendered.yaml" || return 0
  local targets
  # No KEDA CRD means no ScaledObject.
  targets=$(kube get scaledobjects.keda.sh -n "$namespace" \
    -o 'jsonpath={range .items[*]}{.spec.scaleTargetRef.name}{"\n"}{end}' 2>/dev/null || true)
  if grep -qx 'embedding-queue-workers' <<<"$targets"; then
    die "$EXIT_VALIDATION" "a KEDA ScaledObject owns the workers in $namespace; refusing to apply the plain HPA of '$environment' (use --environment production-keda, or delete the ScaledObject first)"
  fi
}

apply_manifests() {
  log "applying to namespace $namespace"
  local args=(apply -f "$workdir/rendered.yaml")
  # One ApplySet for the fleet in this namespace (production and
  # production-keda alike, so switching prunes the other's HPA or
  # ScaledObject); the canary adds one Deployment and must prune nothing.
  if [[ "$prune" == true && "$environment" != canary ]]; then
    args+=(-n "$namespace" --prune --applyset=configmap/embq-applyset)
  fi
  if ! KUBECTL_APPLYSET=true kube "${args[@]}"; then
    die "$EXIT_APPLY" "kubectl apply failed; the cluster may be partly updated, rerun after fixing the error above"
  fi
}

wait_for_rollouts() {
  local deployment
  while read -r deployment; do
    [[ -n "$deployment" ]] || continue
    log "waiting for deployment/$deployment (timeout $ROLLOUT_TIMEOUT)"
    if ! "$KUBECTL" rollout status "deployment/$deployment" -n "$namespace" --timeout="$ROLLOUT_TIMEOUT"; then
      warn "recent events in $namespace:"
      kube get events -n "$namespace" --sort-by=.lastTimestamp 2>/dev/null | tail -n 20 >&2 || true
      die "$EXIT_ROLLOUT" "deployment/$deployment did not roll out; inspect with: kubectl describe deployment/$deployment -n $namespace; roll back with: kubectl rollout undo deployment/$deployment -n $namespace (the previous image runs on this schema unless a migration since it is breaking; to check first, deploy it with --image PREVIOUS, which runs its migrate Job before the rollout)"
    fi
  done < <(rendered_deployments)
}

# A worker is Ready only once its startup probe (/startup) passed and its
# readiness probe (/ready: database, schema, provider, memory) answers 200,
# so the pods' Ready condition is the workers' own health verdict.
check_health() {
  log "checking worker health"
  local pods line pod ready deleting total=0 unready=()
  pods=$(kube get pods -n "$namespace" -l "$WORKER_SELECTOR" \
    -o 'jsonpath={range .items[*]}{.metadata.name}{" "}{.status.conditions[?(@.type=="Ready")].status}{" "}{.metadata.deletionTimestamp}{"\n"}{end}') ||
    die "$EXIT_HEALTH" "could not list worker pods in $namespace"
  while read -r line; do
    [[ -n "$line" ]] || continue
    read -r pod ready deleting <<<"$line"
    [[ -z "${deleting:-}" ]] || continue
    total=$((total + 1))
    [[ "$ready" == "True" ]] || unready+=("$pod")
  done <<<"$pods"
  if [[ $total -eq 0 ]]; then
    die "$EXIT_HEALTH" "no worker pods found in $namespace (selector $WORKER_SELECTOR)"
  fi
  if [[ ${#unready[@]} -gt 0 ]]; then
    die "$EXIT_HEALTH" "${#unready[@]} of $total workers not ready: ${unready[*]}; see kubectl describe pod -n $namespace ${unready[0]}"
  fi
  kube get hpa embedding-queue-workers-hpa -n "$namespace" >&2 2>/dev/null || true
  log "$total workers ready in $namespace"
}

# Sums embedding_jobs_{processed,failed}_total over the pods of track $1 ("processed failed").
track_counters() {
  local pods pod line processed=0 failed=0
  pods=$(kube get pods -n "$namespace" -l "$WORKER_SELECTOR,track=$1" \
    -o 'jsonpath={range .items[*]}{.metadata.name}{"\n"}{end}') || return 1
  for pod in $pods; do
    line=$(kube get --raw "/api/v1/namespaces/$namespace/pods/$pod:$METRICS_PORT/proxy/metrics" 2>/dev/null |
      awk '/^embedding_jobs_processed_total/ { p += $NF } /^embedding_jobs_failed_total/ { f += $NF } END { printf "%d %d", p, f }') ||
      continue
    processed=$((processed + ${line% *}))
    failed=$((failed + ${line#* }))
  done
  echo "$processed $failed"
}

# Watches the canary for CANARY_DURATION and promotes or rolls it back.
judge_canary() {
  local limit=${CANARY_DURATION%s} c0 s0 c1 s1
  [[ "$limit" =~ ^[0-9]+$ ]] || die "$EXIT_USAGE" "CANARY_DURATION must be seconds such as 600s, not '$CANARY_DURATION'"
  c0=$(track_counters canary) || die "$EXIT_CANARY" "could not read the canary's counters"
  s0=$(track_counters stable) || die "$EXIT_CANARY" "could not read the stable workers' counters"
  log "watching the canary against the stable pods for $CANARY_DURATION"
  # A fixed observation window, not a wait for a condition.
  sleep "$limit"
  c1=$(track_counters canary) || die "$EXIT_CANARY" "could not read the canary's counters"
  s1=$(track_counters stable) || die "$EXIT_CANARY" "could not read the stable workers' counters"
  local verdict
  verdict=$(awk -v c0="$c0" -v c1="$c1" -v s0="$s0" -v s1="$s1" -v excess="$CANARY_MAX_EXCESS" -v min="$CANARY_MIN_ATTEMPTS" '
    BEGIN {
      split(c0, a, " "); split(c1, b, " "); split(s0, x, " "); split(s1, y, " ")
      cp = b[1] - a[1]; cf = b[2] - a[2]; sp = y[1] - x[1]; sf = y[2] - x[2]
      cr = (cp + cf) > 0 ? cf / (cp + cf) : 0; sr = (sp + sf) > 0 ? sf / (sp + sf) : 0
      ok = (cp + cf) >= min && cr <= sr + excess
      printf "%s canary %.3f of %d attempts failed, stable %.3f of %d", ok ? "promote" : "rollback", cr, cp + cf, sr, sp + sf
    }')
  log "${verdict#* }"
  if [[ "$verdict" == promote* ]]; then
    log "promoting: deploying the canary's image to $canary_base"
    local promote=(bash "${BASH_SOURCE[0]}" --environment "$canary_base" --namespace "$namespace"
      --image "$(deployment_image "$worker_deployment")")
    [[ "$force" == true ]] && promote+=(--force)
    [[ "$prune" == true ]] || promote+=(--no-prune)
    "${promote[@]}" || die "$?" "promotion to $canary_base failed; the canary is still running"
  fi
  kube delete -f "$workdir/rendered.yaml" --ignore-not-found >/dev/null ||
    warn "could not delete the canary; remove it with kubectl delete -k deploy/kubernetes/overlays/canary"
  [[ "$verdict" == promote* ]] || die "$EXIT_CANARY" "canary rolled back: ${verdict#* }"
  log "canary promoted and removed"
}

main() {
  parse_args "$@"
  check_prerequisites
  check_secrets
  render
  render_migration
  validate
  if [[ "$dry_run" == true ]]; then
    cat "$workdir/rendered.yaml"
    printf -- '---\n'
    cat "$workdir/migrate.yaml"
    log "dry run complete: nothing was changed"
    return 0
  fi
  refuse_hpa_under_keda
  run_migration
  apply_manifests
  wait_for_rollouts
  check_health
  [[ "$environment" != canary ]] || judge_canary
  log "deployed $environment to $namespace"
}

main "$@"
