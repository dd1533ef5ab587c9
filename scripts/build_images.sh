#!/usr/bin/env bash
# Builds the operator and inference images (and the gateway's, when gateway/Dockerfile exists)
# for linux/amd64 and pushes them to Amazon ECR, tagged with the chart's appVersion (or $TAG).
# Not run in CI (no Docker engine there); run it from a machine with Docker (buildx) and the AWS
# CLI, with credentials allowed to push to ECR.
#
#   AWS_ACCOUNT_ID=123456789012 AWS_REGION=us-east-1 scripts/build_images.sh
#
# It logs in to ECR with
#   aws ecr get-login-password --region "$AWS_REGION" \
#     | docker login --username AWS --password-stdin "$AWS_ACCOUNT_ID.dkr.ecr.$AWS_REGION.amazonaws.com"
# creates the repositories when missing (immutable tags, scan on push), and prints the values to
# give the chart: imageRegistry=<registry>, and the tag.
#
# Variables: AWS_ACCOUNT_ID (required), AWS_REGION (default us-east-1), TAG (default: appVersion
# of charts/nextunicorn-compose/Chart.yaml), REPOSITORY_PREFIX (default nextunicorn), PUSH=0 to
# build only.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${AWS_ACCOUNT_ID:?set AWS_ACCOUNT_ID to the 12-digit account that owns the ECR registry}"
region="${AWS_REGION:-us-east-1}"
prefix="${REPOSITORY_PREFIX:-nextunicorn}"
tag="${TAG:-$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/nextunicorn-compose/Chart.yaml)}"
registry="$AWS_ACCOUNT_ID.dkr.ecr.$region.amazonaws.com"
push="${PUSH:-1}"

images=(
  "compose-operator:operator/Dockerfile"
  "compose-inference:inference_image/Dockerfile"
)
if [ -f gateway/Dockerfile ]; then
  images+=("compose-gateway:gateway/Dockerfile")
fi

if [ "$push" = "1" ]; then
  aws ecr get-login-password --region "$region" \
    | docker login --username AWS --password-stdin "$registry"
fi

for entry in "${images[@]}"; do
  name="${entry%%:*}"
  dockerfile="${entry#*:}"
  repository="$prefix/$name"
  if [ ! -f "$dockerfile" ]; then
    echo "build_images: $dockerfile is missing" >&2
    exit 1
  fi
  if [ "$push" = "1" ] && ! aws ecr describe-repositories --region "$region" \
      --repository-names "$repository" >/dev/null 2>&1; then
    aws ecr create-repository --region "$region" --repository-name "$repository" \
      --image-tag-mutability IMMUTABLE --image-scanning-configuration scanOnPush=true >/dev/null
  fi
  output=(--load)
  if [ "$push" = "1" ]; then
    output=(--push)
  fi
  docker buildx build --platform linux/amd64 --file "$dockerfile" \
    --tag "$registry/$repository:$tag" "${output[@]}" .
  echo "built $registry/$repository:$tag"
done

echo "helm values: --set imageRegistry=$registry --set operator.image.repository=$prefix/compose-operator" \
  "--set inference.image.repository=$prefix/compose-inference --set gateway.image.repository=$prefix/compose-gateway" \
  "(tag $tag)"
