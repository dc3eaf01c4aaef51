#!/usr/bin/env bash
# Tests for deploy/scripts/deploy-workers.sh against the stand-in kubectl in
# ./bin (real `kubectl kustomize`, simulated cluster). Prints one line per
# test and a closing "N passed, M failed"; exits non-zero on any failure.
# Needs bash and a real kubectl (for kustomize) on PATH or in REAL_KUBECTL.
set -euo pipefail

TESTS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly TESTS_DIR
readonly SCRIPT="$TESTS_DIR/../deploy-workers.sh"
readonly FAKE_BIN="$TESTS_DIR/bin"
REAL_KUBECTL=${REAL_KUBECTL:-$(command -v kubectl || true)}
if [[ -z "$REAL_KUBECTL" || "$REAL_KUBECTL" == "$FAKE_BIN/kubectl" ]]; then
  echo "a real kubectl is needed for kustomize (set REAL_KUBECTL)" >&2
  exit 2
fi
export REAL_KUBECTL

readonly IMAGE="ghcr.io/acme/embq:1.4.2"
passed=0
failed=0
current=""
current_ok=true
scratch=$(mktemp -d "${TMPDIR:-/tmp}/deploy-tests.XXXXXX")
trap 'rm -rf -- "$scratch"' EXIT

# Results of the last run_deploy.
rc=0
out=""
err=""
log=""
state=""

# run_deploy [VAR=value ...] -- [script args ...]
run_deploy() {
  local envs=()
  while [[ $# -gt 0 && "$1" != "--" ]]; do
    envs+=("$1")
    shift
  done
  [[ $# -gt 0 ]] && shift
  local dir
  dir=$(mktemp -d "$scratch/run.XXXXXX")
  state="$dir/state"
  log="$dir/kubectl.log"
  mkdir -p "$state"
  : >"$log"
  rc=0
  env PATH="$FAKE_BIN:$PATH" FAKE_KUBECTL_LOG="$log" FAKE_KUBECTL_STATE="$state" \
    ROLLOUT_TIMEOUT=5s "${envs[@]}" \
    bash "$SCRIPT" "$@" >"$dir/stdout" 2>"$dir/stderr" || rc=$?
  out="$dir/stdout"
  err="$dir/stderr"
}

begin() {
  current=$1
  current_ok=true
}

fail() {
  current_ok=false
  printf '    %s\n' "$*"
}

end() {
  if [[ "$current_ok" == true ]]; then
    passed=$((passed + 1))
    printf 'ok   %s\n' "$current"
  else
    failed=$((failed + 1))
    printf 'FAIL %s\n' "$current"
    printf '    --- stderr:\n'
    sed 's/^/    | /' "$err" | tail -n 15
    printf '    --- kubectl calls:\n'
    sed 's/^/    | /' "$log"
  fi
}

expect_rc() {
  [[ "$rc" -eq "$1" ]] || fail "exit code $rc, expected $1"
}

# expect_call REGEX: some kubectl call matches REGEX (extended regex).
expect_call() {
  grep -Eq -- "$1" "$log" || fail "no kubectl call matching /$1/"
}

expect_no_call() {
  if grep -Eq -- "$1" "$log"; then
    fail "unexpected kubectl call matching /$1/: $(grep -E -- "$1" "$log" | head -n 1)"
  fi
}

expect_err() {
  grep -Eq -- "$1" "$err" || fail "stderr lacks /$1/"
}

expect_out() {
  grep -Eq -- "$1" "$out" || fail "stdout lacks /$1/"
}

# The manifest passed to the last non-dry-run apply.
applied() {
  find "$state" -name 'applied-*' ! -name '*dryrun*' | sort | tail -n 1
}

expect_applied() {
  local file
  file=$(applied)
  if [[ -z "$file" ]]; then
    fail "nothing was applied"
  elif ! grep -Eq -- "$1" "$file"; then
    fail "applied manifests lack /$1/"
  fi
}

expect_nothing_applied() {
  [[ -z "$(applied)" ]] || fail "manifests were applied"
}

# Line number of the first kubectl call matching REGEX (0 if none).
call_line() {
  local n
  n=$(grep -En -- "$1" "$log" | head -n 1 | cut -d: -f1)
  echo "${n:-0}"
}

# --- usage -----------------------------------------------------------------

begin "--help prints usage and exit codes and touches no cluster"
run_deploy -- --help
expect_rc 0
expect_out '^Usage: deploy-workers.sh'
expect_out 'Exit codes:'
[[ ! -s "$log" ]] || fail "kubectl was called"
end

begin "-h is --help"
run_deploy -- -h
expect_rc 0
expect_out '^Usage:'
end

begin "an unknown option is a usage error"
run_deploy -- --frobnicate
expect_rc 2
expect_err 'unknown option: --frobnicate'
end

begin "an unknown environment is a usage error"
run_deploy -- --environment qa
expect_rc 2
expect_err 'production, production-keda, staging or canary'
end

begin "an option missing its value is a usage error"
run_deploy -- --image ghcr.io/acme/embq:1 --namespace
expect_rc 2
expect_err '--namespace needs a value'
end

begin "an invalid namespace is a usage error"
run_deploy -- --namespace Bad_Namespace
expect_rc 2
expect_err 'not a valid namespace'
end

begin "an image reference with spaces is a usage error"
run_deploy -- --image 'embq; rm -rf /'
expect_rc 2
end

# --- prerequisites -----------------------------------------------------------

begin "missing kubectl exits 3"
run_deploy KUBECTL=/nonexistent/kubectl -- --image "$IMAGE"
expect_rc 3
expect_err 'kubectl not found'
end

begin "an unreachable cluster exits 4 before rendering or applying"
run_deploy FAKE_CLUSTER_DOWN=1 -- --image "$IMAGE"
expect_rc 4
expect_err 'cluster not reachable'
expect_no_call '^kustomize'
expect_nothing_applied
end

begin "--dry-run without a cluster renders offline and succeeds"
run_deploy FAKE_CLUSTER_DOWN=1 -- --dry-run --image "$IMAGE"
expect_rc 0
expect_err 'rendering and validating offline'
expect_out '^kind: Deployment$'
expect_out "image: $IMAGE"
expect_no_call '^apply'
expect_no_call '^rollout'
end

begin "a missing Secret exits 5 and names it"
run_deploy FAKE_MISSING="ai-secrets" -- --image "$IMAGE"
expect_rc 5
expect_err 'secret ai-secrets'
expect_err 'deploy/README.md'
expect_nothing_applied
end

begin "every missing Secret is listed at once"
run_deploy FAKE_MISSING="supabase-secrets embq-shutdown-token" -- --image "$IMAGE"
expect_rc 5
expect_err 'secret supabase-secrets, secret embq-shutdown-token'
end

begin "a Secret without its required key exits 5"
run_deploy FAKE_EMPTY_KEYS="supabase-secrets/database-url" -- --image "$IMAGE"
expect_rc 5
expect_err 'key database-url in secret supabase-secrets'
end

begin "--force deploys despite a missing Secret, with a warning"
run_deploy FAKE_MISSING="ai-secrets" -- --force --image "$IMAGE"
expect_rc 0
expect_err 'warning: missing in paperless-maverick: secret ai-secrets'
expect_applied 'name: embedding-queue-workers$'
end

begin "a missing feature-flags-config only warns"
run_deploy FAKE_MISSING="feature-flags-config" -- --image "$IMAGE"
expect_rc 0
expect_err 'feature-flags-config not found'
end

begin "Secrets are looked up in the target namespace"
run_deploy -- --image "$IMAGE"
expect_call '^--request-timeout=15s get secret supabase-secrets -n paperless-maverick -o name$'
expect_call 'get secret supabase-secrets -n paperless-maverick -o jsonpath=\{\.data\.database-url\}'
expect_call 'get secret embq-shutdown-token -n paperless-maverick -o jsonpath=\{\.data\.token\}'
end

# --- validation ----------------------------------------------------------------

begin "the placeholder registry is refused without --image (exit 6)"
run_deploy --
expect_rc 6
expect_err 'placeholder registry'
expect_nothing_applied
end

begin "a tag-only --image keeps the overlay's registry (allowed with --force)"
run_deploy -- --image 1.4.2 --force
expect_rc 0
expect_applied 'image: registry.example.com/paperless-maverick/embq:1.4.2$'
end

begin "a rejected server-side dry run exits 6 and applies nothing"
run_deploy FAKE_DRYRUN_FAIL=1 -- --image "$IMAGE"
expect_rc 6
expect_err 'rejected the manifests'
expect_err 'strict decoding error'
expect_call '^--request-timeout=15s apply --dry-run=server --validate=strict -f '
expect_nothing_applied
end

begin "--skip-validation applies without the server-side dry run"
run_deploy FAKE_DRYRUN_FAIL=1 -- --skip-validation --image "$IMAGE"
expect_rc 0
expect_no_call 'dry-run'
expect_applied 'kind: Deployment'
end

begin "a broken overlay exits 6"
broken="$scratch/broken-overlays"
mkdir -p "$broken/production"
printf 'resources:\n  - does-not-exist.yaml\n' >"$broken/production/kustomization.yaml"
run_deploy EMBQ_OVERLAYS_DIR="$broken" -- --image "$IMAGE"
expect_rc 6
expect_err 'could not render'
expect_nothing_applied
end

# --- apply, rollout, health ------------------------------------------------------

begin "a failed apply exits 7"
run_deploy FAKE_APPLY_FAIL=1 -- --image "$IMAGE"
expect_rc 7
expect_err 'kubectl apply failed'
expect_no_call '^rollout'
end

begin "a failed rollout exits 8 with events and the undo command"
run_deploy FAKE_ROLLOUT_FAIL=embedding-queue-workers -- --image "$IMAGE"
expect_rc 8
expect_call '^rollout status deployment/embedding-queue-workers -n paperless-maverick --timeout=5s$'
expect_call 'get events -n paperless-maverick'
expect_err 'kubectl rollout undo deployment/embedding-queue-workers -n paperless-maverick'
expect_no_call 'get pods'
end

begin "a not-ready worker after the rollout exits 9 and names it"
run_deploy FAKE_PODS='embedding-queue-workers-a True \nembedding-queue-workers-b False \n' -- --image "$IMAGE"
expect_rc 9
expect_err '1 of 2 workers not ready: embedding-queue-workers-b'
end

begin "no worker pods after the rollout exits 9"
run_deploy FAKE_PODS='' -- --image "$IMAGE"
expect_rc 9
expect_err 'no worker pods'
end

begin "terminating pods from the old ReplicaSet are ignored"
run_deploy FAKE_PODS='embedding-queue-workers-a True \nembedding-queue-workers-old False 2025-01-01T00:00:00Z\n' -- --image "$IMAGE"
expect_rc 0
expect_err '1 workers ready'
end

begin "a full deployment runs every step in order"
run_deploy -- --image "$IMAGE"
expect_rc 0
ready=$(call_line 'get --raw /readyz')
secret=$(call_line 'get secret supabase-secrets')
render=$(call_line '^kustomize ')
dry=$(call_line 'apply --dry-run=server')
apply=$(call_line 'apply -f ')
rollout=$(call_line '^rollout status deployment/embedding-queue-workers ')
pods=$(call_line "get pods -n paperless-maverick -l app=embedding-queue-worker")
for n in "$ready" "$secret" "$render" "$dry" "$apply" "$rollout" "$pods"; do
  [[ "$n" -gt 0 ]] || fail "a step is missing: readyz=$ready secret=$secret kustomize=$render dry=$dry apply=$apply rollout=$rollout pods=$pods"
done
if ! [[ "$ready" -lt "$secret" && "$secret" -lt "$render" && "$render" -lt "$dry" &&
  "$dry" -lt "$apply" && "$apply" -lt "$rollout" && "$rollout" -lt "$pods" ]]; then
  fail "steps out of order: readyz=$ready secret=$secret kustomize=$render dry=$dry apply=$apply rollout=$rollout pods=$pods"
fi
expect_applied "image: $IMAGE$"
expect_applied '^kind: HorizontalPodAutoscaler$'
expect_err 'deployed production to paperless-maverick'
end

begin "every Deployment in the manifests is waited for"
run_deploy -- --image "$IMAGE"
file=$(applied)
want=$(grep -c '^kind: Deployment$' "$file" || true)
got=$(grep -c '^rollout status deployment/' "$log" || true)
[[ "$want" -ge 1 && "$want" -eq "$got" ]] || fail "$want Deployments applied, $got rollouts awaited"
end

begin "the controller image follows --image's registry and tag"
run_deploy -- --image "$IMAGE"
expect_rc 0
expect_applied 'image: ghcr.io/acme/embq-controller:1.4.2$'
end

begin "a tag-only --image retags the controller too"
run_deploy -- --image 1.5.0 --force
expect_rc 0
expect_applied 'image: registry.example.com/paperless-maverick/embq:1.5.0$'
expect_applied 'image: registry.example.com/paperless-maverick/embq-controller:1.5.0$'
end

begin "--controller-image overrides the derived controller image"
run_deploy -- --image "$IMAGE" --controller-image quay.io/ops/restart-controller:7
expect_rc 0
expect_applied "image: $IMAGE$"
expect_applied 'image: quay.io/ops/restart-controller:7$'
end

begin "--image with a digest pins the digest and needs --controller-image"
digest="sha256:$(printf '%064d' 7)"
run_deploy -- --image "ghcr.io/acme/embq@$digest"
expect_rc 6
expect_err 'pass --controller-image'
run_deploy -- --image "ghcr.io/acme/embq@$digest" --controller-image "ghcr.io/acme/embq-controller@$digest"
expect_rc 0
expect_applied "image: ghcr.io/acme/embq@$digest$"
expect_applied "image: ghcr.io/acme/embq-controller@$digest$"
end

begin "--image with a registry port and tag"
run_deploy -- --image "registry.internal:5000/ml/embq:2.0.0"
expect_rc 0
expect_applied 'image: registry.internal:5000/ml/embq:2.0.0$'
end

begin "--namespace moves every object and the Secret checks"
run_deploy -- --namespace embq-blue --image "$IMAGE"
expect_rc 0
expect_call 'get secret ai-secrets -n embq-blue -o name'
expect_call '^rollout status deployment/embedding-queue-workers -n embq-blue '
file=$(applied)
if grep -E '^  namespace: ' "$file" | grep -vq 'namespace: embq-blue$'; then
  fail "objects outside embq-blue: $(grep -E '^  namespace: ' "$file" | sort -u | tr '\n' ' ')"
fi
expect_applied '^  namespace: embq-blue$'
end

begin "--environment staging deploys the staging overlay to its namespace"
run_deploy -- --environment staging --image "$IMAGE"
expect_rc 0
expect_call 'get secret supabase-secrets -n paperless-maverick-staging -o name'
expect_applied 'namespace: paperless-maverick-staging$'
expect_applied 'minReplicas: 1$'
expect_applied 'RUST_LOG: info,embq=debug$'
end

begin "--environment=staging and --image=... forms are accepted"
run_deploy -- --environment=staging "--image=$IMAGE"
expect_rc 0
expect_applied "image: $IMAGE$"
expect_applied 'namespace: paperless-maverick-staging$'
end

begin "--dry-run with a cluster validates on the server, prints YAML, changes nothing"
run_deploy -- --dry-run --image "$IMAGE"
expect_rc 0
expect_call 'apply --dry-run=server --validate=strict -f '
expect_nothing_applied
expect_no_call '^rollout'
head -n 1 "$out" | grep -q '^apiVersion: ' || fail "stdout does not start with a manifest"
expect_out '^kind: HorizontalPodAutoscaler$'
end

# --- schema migration ------------------------------------------------------------

# The migrate Job the last run created (empty if none).
migrate_job() {
  find "$state" -name 'job-*' | sort | tail -n 1
}

expect_job() {
  local file
  file=$(migrate_job)
  if [[ -z "$file" ]]; then
    fail "no migrate Job was created"
  elif ! grep -Eq -- "$1" "$file"; then
    fail "the migrate Job lacks /$1/"
  fi
}

begin "the migrate Job runs with the workers' image and ends before anything else is applied"
run_deploy -- --image "$IMAGE"
expect_rc 0
expect_job "image: $IMAGE$"
expect_job '^  namespace: paperless-maverick$'
expect_job '^  name: embq-migrate$'
delete=$(call_line 'delete job embq-migrate -n paperless-maverick --ignore-not-found')
job=$(call_line 'apply -f .*/migrate\.yaml$')
waited=$(call_line 'get job embq-migrate -n paperless-maverick')
apply=$(call_line 'apply -f .*/rendered\.yaml( |$)')
rollout=$(call_line '^rollout status ')
if ! [[ "$delete" -gt 0 && "$delete" -lt "$job" && "$job" -lt "$waited" && "$waited" -lt "$apply" && "$apply" -lt "$rollout" ]]; then
  fail "migration out of order: delete=$delete job=$job wait=$waited apply=$apply rollout=$rollout"
fi
expect_err 'schema migrated'
end

begin "a tag-only --image gives the migrate Job the workers' retagged image"
run_deploy -- --image 1.5.0 --force --namespace embq-blue
expect_rc 0
expect_job 'image: registry.example.com/paperless-maverick/embq:1.5.0$'
expect_job '^  namespace: embq-blue$'
end

begin "a failed migration exits 10 with its log and leaves the workers alone"
run_deploy FAKE_MIGRATE=failed -- --image "$IMAGE"
expect_rc 10
expect_call ' logs job/embq-migrate -n paperless-maverick'
expect_err 'is breaking'
expect_err 'nothing was applied to the workers'
expect_nothing_applied
expect_no_call '^rollout'
end

begin "a migration that does not end in time exits 10"
run_deploy FAKE_MIGRATE=running MIGRATE_TIMEOUT=1s MIGRATE_POLL_INTERVAL=0.2 -- --image "$IMAGE"
expect_rc 10
expect_err 'did not finish within 1s'
expect_nothing_applied
end

begin "a MIGRATE_TIMEOUT without seconds is a usage error"
run_deploy MIGRATE_TIMEOUT=ten -- --image "$IMAGE"
expect_rc 2
expect_nothing_applied
end

begin "--dry-run validates and prints the migrate Job but runs nothing"
run_deploy -- --dry-run --image "$IMAGE"
expect_rc 0
expect_call 'apply --dry-run=server --validate=strict -f .*/migrate\.yaml$'
expect_no_call ' delete '
[[ -z "$(migrate_job)" ]] || fail "a migrate Job was created"
expect_out '^  name: embq-migrate$'
end

begin "a rollback across an additive migration runs the old image's migrate Job, then the old workers"
schema="$scratch/schema-additive"
releases="1.4.2=10 1.5.0=11/10"
for tag in 1.4.2 1.5.0 1.4.2; do
  run_deploy FAKE_SCHEMA_FILE="$schema" FAKE_RELEASES="$releases" -- --image "ghcr.io/acme/embq:$tag"
  expect_rc 0
  expect_job "image: ghcr.io/acme/embq:$tag$"
  expect_applied "image: ghcr.io/acme/embq:$tag$"
done
[[ "$(sort -n "$schema" | tail -n 1)" == "11 10" ]] || fail "the schema moved back: $(tr '\n' ' ' <"$schema")"
expect_call '^rollout status deployment/embedding-queue-workers '
end

begin "a rollback across a breaking migration is refused before the workers change"
schema="$scratch/schema-breaking"
releases="1.4.2=10 1.6.0=12/12"
run_deploy FAKE_SCHEMA_FILE="$schema" FAKE_RELEASES="$releases" -- --image ghcr.io/acme/embq:1.4.2
expect_rc 0
run_deploy FAKE_SCHEMA_FILE="$schema" FAKE_RELEASES="$releases" -- --image ghcr.io/acme/embq:1.6.0
expect_rc 0
run_deploy FAKE_SCHEMA_FILE="$schema" FAKE_RELEASES="$releases" -- --image ghcr.io/acme/embq:1.4.2
expect_rc 10
expect_err 'version 12, and a migration since this binary.s version 10 is breaking'
expect_nothing_applied
expect_no_call '^rollout'
end

# --- every combination of the boolean flags, in both environments -------------

for environment in production staging; do
  for dry in false true; do
    for force in false true; do
      for skip in false true; do
        flags=(--environment "$environment" --image "$IMAGE")
        [[ "$dry" == true ]] && flags+=(--dry-run)
        [[ "$force" == true ]] && flags+=(--force)
        [[ "$skip" == true ]] && flags+=(--skip-validation)
        begin "flags: ${flags[*]}"
        run_deploy -- "${flags[@]}"
        expect_rc 0
        if [[ "$dry" == true ]]; then
          expect_call 'apply --dry-run=server'
          expect_nothing_applied
          expect_no_call '^rollout'
          expect_out '^kind: Deployment$'
        else
          expect_applied '^kind: Deployment$'
          expect_call '^rollout status deployment/embedding-queue-workers '
          expect_call 'get pods '
          if [[ "$skip" == true ]]; then
            expect_no_call 'dry-run'
          else
            expect_call 'apply --dry-run=server'
          fi
        fi
        end
      done
    done
  done
done

# --- every overlay, pruning, KEDA and canaries (issue 19) ----------------------

begin "production applies with pruning through the fleet's ApplySet"
run_deploy -- --image "$IMAGE"
expect_rc 0
expect_call 'apply -f .* -n paperless-maverick --prune --applyset=configmap/embq-applyset'
end

begin "--no-prune applies without pruning"
run_deploy -- --image "$IMAGE" --no-prune
expect_rc 0
expect_no_call 'prune'
end

begin "production-keda deploys the ScaledObject and its TriggerAuthentication, no HPA"
run_deploy FAKE_SCALEDOBJECT=1 -- --environment production-keda --image "$IMAGE"
expect_rc 0
expect_applied '^kind: ScaledObject$'
expect_applied '^kind: TriggerAuthentication$'
if grep -q '^kind: HorizontalPodAutoscaler$' "$(applied)"; then fail "a plain HPA was applied with KEDA"; fi
end

begin "the plain HPA is refused where a ScaledObject owns the workers"
run_deploy FAKE_SCALEDOBJECT=1 -- --environment production --image "$IMAGE"
expect_rc 6
expect_err 'KEDA ScaledObject owns the workers'
expect_nothing_applied
end

begin "a healthy canary is promoted to production and removed"
run_deploy CANARY_DURATION=0s -- --environment canary --image "$IMAGE"
expect_rc 0
# The canary's own apply prunes nothing (the promotion's apply does).
first_apply=$(grep -E ' apply -f ' "$log" | head -n 1)
[[ "$first_apply" != *prune* ]] || fail "the canary was applied with --prune: $first_apply"
expect_call 'get --raw /api/v1/namespaces/paperless-maverick/pods/embedding-queue-workers-canary-5c-a:9091/proxy/metrics'
expect_err 'promote|promoting'
expect_err 'canary 0.000 of 50 attempts failed'
# The promotion deploys the canary's image to the stable fleet, then deletes the canary.
[[ $(call_line '^rollout status deployment/embedding-queue-workers ') -gt 0 ]] || fail "stable fleet not rolled out"
expect_call 'delete -f '
[[ $(call_line 'delete -f ') -gt $(call_line '--prune --applyset') ]] || fail "canary deleted before the promotion"
end

begin "a canary failing more than the stable pods is rolled back, exit 11"
run_deploy CANARY_DURATION=0s FAKE_CANARY_STEP="40 10" -- --environment canary --image "$IMAGE"
expect_rc 11
expect_err 'canary rolled back: canary 0.200 of 50 attempts failed, stable 0.010 of 202'
expect_call 'delete -f '
expect_no_call '--prune --applyset'
end

begin "a canary that did too little work is rolled back"
run_deploy CANARY_DURATION=0s FAKE_CANARY_STEP="5 0" -- --environment canary --image "$IMAGE"
expect_rc 11
expect_err 'of 5 attempts'
end

begin "--canary-base production-keda promotes into the KEDA fleet"
run_deploy CANARY_DURATION=0s FAKE_SCALEDOBJECT=1 -- --environment canary --canary-base production-keda --image "$IMAGE"
expect_rc 0
expect_applied '^kind: (ScaledObject|Deployment)$'
end

begin "an unknown --canary-base is a usage error"
run_deploy -- --environment canary --canary-base staging
expect_rc 2
expect_err 'canary-base must be production or production-keda'
end

begin "--canary-base=VALUE is read like the other options' = form"
run_deploy -- --environment canary --canary-base=staging
expect_rc 2
expect_err 'canary-base must be production or production-keda'
end

echo
echo "$passed passed, $failed failed"
[[ "$failed" -eq 0 ]]
