#!/bin/sh
# One shot, before the lake sink starts: creates the lake's bucket if it is missing, then
# checks what start.sh promised, as the public would see it: anonymous users can list and read
# the bucket. Safe to run again. Each step is tried again on failure (the master can still be
# electing itself, or the gateway not yet see a new bucket): INIT_TRIES times (10), every
# INIT_RETRY_DELAY_S seconds (3), each try bounded by INIT_STEP_TIMEOUT_S (20); then it exits
# non-zero with what failed, and the sink never starts. So it ends within about 4 minutes.
#
#   init.sh HOST   HOST runs SeaweedFS (master on 9333, S3 on 8333)
set -eu

host="${1:?usage: init.sh HOST}"
bucket="${S3_BUCKET:?S3_BUCKET is not set}"
tries="${INIT_TRIES:-10}"
delay="${INIT_RETRY_DELAY_S:-3}"
step="${INIT_STEP_TIMEOUT_S:-20}"

weed_shell() {
  # The shell reads commands from standard input; older releases exit 0 even when a command
  # fails, so every step below is checked by what it left behind, not by this exit code.
  echo "$1" | timeout "$step" weed shell -master="$host:9333"
}

has_bucket() {
  weed_shell "s3.bucket.list" 2>/dev/null | grep -Eq "^[[:space:]]*$bucket([[:space:]]|$)"
}

make_bucket() {
  has_bucket && return 0
  weed_shell "s3.bucket.create -name $bucket" >/dev/null 2>&1 || true  # judged just below
  has_bucket
}

# List it as an anonymous client would. start.sh granted anonymous reads of S3_BUCKET only,
# so this also catches a bucket name that differs between the two.
anonymous_list() {
  wget -q -T "$step" -O /dev/null "http://$host:8333/$bucket/?list-type=2"
}

# retry WHAT COMMAND...: COMMAND until it succeeds, at most $tries times.
retry() {
  what="$1"
  shift
  n=1
  until "$@"; do
    if [ "$n" -ge "$tries" ]; then
      echo "init.sh: $what: failed $n times, giving up" >&2
      return 1
    fi
    echo "init.sh: $what: failed (try $n of $tries), again in ${delay}s" >&2
    n=$((n + 1))
    sleep "$delay"
  done
}

retry "make bucket $bucket through the master at $host:9333" make_bucket
echo "init.sh: bucket $bucket is there"
retry "list bucket $bucket anonymously at http://$host:8333" anonymous_list
echo "init.sh: bucket $bucket is publicly readable"
