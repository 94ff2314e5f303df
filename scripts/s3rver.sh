# Sourced by the probes: `start_s3rver DIR PORT BUCKET...` starts s3rver (installed by
# bench/bench-s3.sh) on loopback with its objects under DIR/s3, sets SP to its pid, exports the
# credentials it accepts, and returns once it listens.
S3RVER=/var/cache/graviton/s3rver/node_modules/.bin/s3rver
start_s3rver() {
  local dir=$1 port=$2 b buckets=()
  shift 2
  [ -x "$S3RVER" ] || { echo "s3rver is missing: run bench/bench-s3.sh once" >&2; return 1; }
  for b in "$@"; do buckets+=(--configure-bucket "$b"); done
  export AWS_ACCESS_KEY_ID=S3RVER AWS_SECRET_ACCESS_KEY=S3RVER AWS_REGION=us-east-1
  mkdir -p "$dir/s3"
  "$S3RVER" -d "$dir/s3" -a 127.0.0.1 -p "$port" -s --no-vhost-buckets "${buckets[@]}" \
    >"$dir/s3rver.log" 2>&1 &
  SP=$!
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0; sleep 0.1; done
  echo "s3rver did not start on port $port (see $dir/s3rver.log)" >&2
  return 1
}
