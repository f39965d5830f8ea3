#!/bin/sh
# One shot, before the lake sink starts: creates the lake's bucket if it is missing, then
# checks what start.sh promised, as the public would see it: anonymous users can list and read
# the bucket. Safe to run again; any failure exits non-zero, and the sink then never starts.
#
#   init.sh HOST   HOST runs SeaweedFS (master on 9333, S3 on 8333)
set -eu

host="${1:?usage: init.sh HOST}"
bucket="${S3_BUCKET:?S3_BUCKET is not set}"

weed_shell() {
  # The shell reads commands from standard input; older releases exit 0 even when a command
  # fails, so every step below is checked by what it left behind, not by this exit code.
  echo "$1" | weed shell -master="$host:9333"
}

has_bucket() {
  weed_shell "s3.bucket.list" | grep -Eq "^[[:space:]]*$bucket([[:space:]]|$)"
}

if has_bucket; then
  echo "init.sh: bucket $bucket exists"
else
  weed_shell "s3.bucket.create -name $bucket" || true  # judged by what it left, just below
  if ! has_bucket; then
    echo "init.sh: could not create bucket $bucket through the master at $host:9333" >&2
    exit 1
  fi
  echo "init.sh: created bucket $bucket"
fi

# List it as an anonymous client would, giving the S3 gateway a moment to see a new bucket.
# start.sh granted anonymous reads of S3_BUCKET only, so this also catches a bucket name that
# differs between the two.
tries=0
until wget -q -O /dev/null "http://$host:8333/$bucket/?list-type=2"; do
  tries=$((tries + 1))
  if [ "$tries" -ge 15 ]; then
    echo "init.sh: anonymous users cannot list bucket $bucket at http://$host:8333" >&2
    exit 1
  fi
  sleep 2
done
echo "init.sh: bucket $bucket is publicly readable"
