#!/usr/bin/env bash
# The compose deployment end to end, without a registry (CI: .ci/run):
#   1. registry-free bases from this host (scripts/offline-bases.sh), the simple model image
#   2. docker-compose builds the broker from the Dockerfile on those bases, starts Redis
#      (tb-redis:local) and the broker with settings from a generated env file
#   3. one inference over curl, an admin call refused without the token, ports bound
#      to 127.0.0.1 only
#   4. docker-compose down: no model container of this broker is left
# Needs `npm run build` (the model image holds dist/), docker-compose (v1 or v2), curl.
# Env: TB_BASE_TAG (tag of the bases, default local), TB_IMAGE_TAG (of the model image, default dev).
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[compose-smoke %ss] %s\n' "$SECONDS" "$*" >&2; }

if command -v docker-compose >/dev/null; then compose=(docker-compose); else compose=(docker compose); fi
free_port() { node -e "const s=require('net').createServer().listen(0,'127.0.0.1',()=>{console.log(s.address().port);s.close()})"; }

work=$(mktemp -d)
tag=${TB_BASE_TAG:-local}
export TB_BASE_TAG=$tag
model_image=tensorbroker/simple:${TB_IMAGE_TAG:-dev}
project=tbsmoke$$
id=tb-smoke-$$
token=$(node -e "console.log(require('crypto').randomBytes(24).toString('hex'))")
http=$(free_port); grpc=$(free_port); metrics=$(free_port); zmq=$(free_port); redis=$(free_port)
mkdir -p "$work/sock"
cat >"$work/models.yaml" <<EOF
models:
  simple:
    image: $model_image
    pull_policy: never
    batch_size: 8
    min_replicas: 1
    max_replicas: 1
EOF
cat >"$work/env" <<EOF
TB_ADMIN_TOKEN=$token
TB_BIND=127.0.0.1
TB_HTTP_PORT=$http
TB_GRPC_PORT=$grpc
TB_METRICS_PORT=$metrics
TB_ZMQ_PORT=$zmq
TB_REDIS_PORT=$redis
TB_BROKER_ID=$id
TB_SOCKET_DIR=$work/sock
TB_MODELS_FILE=$work/models.yaml
TB_BUILD_IMAGE=tb-node-build:$tag
TB_BASE_IMAGE=tb-node-base:$tag
TB_REDIS_IMAGE=tb-redis:$tag
TB_BROKER_IMAGE=tensorbroker:smoke
EOF
dc() { "${compose[@]}" -p "$project" --env-file "$work/env" "$@"; }

cleanup() {
  local rc=$?
  if [ $rc -ne 0 ]; then log "failed; broker logs:"; dc logs --tail=60 broker >&2 || true; fi
  dc down -v --timeout 20 >/dev/null 2>&1 || true
  docker ps -aq --filter "label=tensorbroker.owner=$id" | xargs -r docker rm -f >/dev/null
  rm -rf "$work"
  exit $rc
}
trap cleanup EXIT

log "offline bases"
scripts/offline-bases.sh node build redis
log "model image $model_image"
TB_BASE_IMAGE=tb-node-base:$tag node dist/examples/build-images.js simple 2>&1 | grep -E 'up to date|building|built' >&2 || true
log "compose build (broker from the Dockerfile on tb-node-build/tb-node-base)"
DOCKER_BUILDKIT=0 COMPOSE_DOCKER_CLI_BUILD=0 dc build broker >"$work/build.log" 2>&1 || { tail -40 "$work/build.log" >&2; exit 1; }
log "compose up"
dc up -d --no-build

url=http://127.0.0.1:$http
for _ in $(seq 1 240); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "$url/v2/models/simple/ready")" = 200 ] && break
  sleep 0.5
done
[ "$(curl -s -o /dev/null -w '%{http_code}' "$url/v2/models/simple/ready")" = 200 ] || { log "simple never became ready"; exit 1; }

log "one inference over curl"
a=$(seq -s, 0 15); ones=$(printf '1,%.0s' $(seq 1 15))1
body="{\"inputs\":[{\"name\":\"INPUT0\",\"datatype\":\"INT32\",\"shape\":[1,16],\"data\":[[$a]]},{\"name\":\"INPUT1\",\"datatype\":\"INT32\",\"shape\":[1,16],\"data\":[[$ones]]}]}"
out=$(curl -sS --fail-with-body "$url/v2/models/simple/infer" -H 'content-type: application/json' -d "$body")
echo "$out" >&2
node -e '
const r = JSON.parse(process.argv[1]);
const sum = r.outputs.find((o) => o.name === "OUTPUT0").data.flat();
if (JSON.stringify(sum) !== JSON.stringify(Array.from({ length: 16 }, (_, i) => i + 1))) { console.error("wrong OUTPUT0", sum); process.exit(1); }' "$out"

log "admin API needs the token"
[ "$(curl -s -o /dev/null -w '%{http_code}' -X DELETE "$url/admin/models/simple")" = 401 ] || { log "admin call without a token was not refused with 401"; exit 1; }
log "ports bound to 127.0.0.1 only"
if command -v ss >/dev/null; then
  listening=$(ss -ltnH "( sport = :$http or sport = :$grpc or sport = :$metrics or sport = :$zmq or sport = :$redis )" | awk '{print $4}')
  echo "$listening" >&2
  [ "$(grep -c . <<<"$listening")" -ge 5 ] || { log "expected 5 listening ports"; exit 1; }
  ! grep -qv '^127\.0\.0\.1:' <<<"$listening" || { log "a port listens beyond 127.0.0.1"; exit 1; }
fi

log "compose down"
dc down -v --timeout 20 >/dev/null 2>&1
left=$(docker ps -aq --filter "label=tensorbroker.owner=$id")
[ -z "$left" ] || { log "model containers left after down: $left"; exit 1; }
log "ok"
