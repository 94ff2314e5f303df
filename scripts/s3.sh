# Sourced by test.sh: starts an S3-compatible server on loopback for the tests (s3s-fs, pinned
# and installed by test.sh) and exports where it is and the test credentials.
S3_DIR=/var/tmp/graviton-test-s3
S3_PORT=${GRAVITON_TEST_S3_PORT:-54330}
S3_BIN=$(command -v s3s-fs || true)
if [ -z "$S3_BIN" ]; then
  echo "s3s-fs not found (scripts/test.sh installs it)" >&2
  return 1
fi
export AWS_ACCESS_KEY_ID=graviton-test AWS_SECRET_ACCESS_KEY=graviton-test-secret
export AWS_REGION=us-east-1
if ! (exec 3<>"/dev/tcp/127.0.0.1/$S3_PORT") 2>/dev/null; then
  rm -rf "$S3_DIR" && mkdir -p "$S3_DIR/data/graviton-test"
  # started in its own folder: s3s-fs fails every request once its working folder is gone
  (cd "$S3_DIR" && exec nohup "$S3_BIN" --host 127.0.0.1 --port "$S3_PORT" \
    --access-key "$AWS_ACCESS_KEY_ID" --secret-key "$AWS_SECRET_ACCESS_KEY" "$S3_DIR/data" \
    >"$S3_DIR/log" 2>&1 &)
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$S3_PORT") 2>/dev/null && break
    sleep 0.1
  done
fi
mkdir -p "$S3_DIR/data/graviton-test"
export GRAVITON_S3_BIN="$S3_BIN"
# where the server keeps its objects (tests damage blocks there on purpose)
export GRAVITON_TEST_S3_ROOT="$S3_DIR/data"
# tests add a prefix of their own
export GRAVITON_TEST_S3="s3://graviton-test?endpoint=http://127.0.0.1:$S3_PORT&region=us-east-1"
