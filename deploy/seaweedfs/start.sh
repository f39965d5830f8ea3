#!/bin/sh
# The lake's object store in docker-compose.yml: writes SeaweedFS's S3 identities from the
# environment, then runs the image's own entrypoint with the command compose gives.
#
#   S3_ACCESS_KEY_ID / S3_SECRET_ACCESS_KEY  the lake sink's key: Write on S3_BUCKET only
#   anonymous (no key)                       Read, List on S3_BUCKET: the public bucket
#
# The sink only PUTs objects, so its key may not read, list or touch another bucket, nor
# administer any (SeaweedFS's Write is coarser than S3's s3:PutObject: it also lets the key
# delete objects of the bucket and set its CORS, lifecycle and versioning). Nobody else
# exists: no admin key, no other bucket; init.sh makes the bucket through the master, with no
# S3 key at all. Because a config file is given, SeaweedFS
# enforces authentication from its first request on (before the bucket even exists), and the
# identities are written anew at every start and kept nowhere else: change a key, restart.
set -eu

bucket="${S3_BUCKET:?S3_BUCKET is not set}"
key="${S3_ACCESS_KEY_ID:?S3_ACCESS_KEY_ID is not set}"
secret="${S3_SECRET_ACCESS_KEY:?S3_SECRET_ACCESS_KEY is not set}"

# The values go into JSON as they are: refuse any character that would need escaping there.
for value in "$bucket" "$key" "$secret"; do
  case "$value" in
    *[!A-Za-z0-9._~+/=-]*)
      echo "start.sh: S3_BUCKET, S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY may hold only" \
           "letters, digits and . _ ~ + / = -" >&2
      exit 2
      ;;
  esac
done

config_dir="${TMPDIR:-/tmp}/tapline-s3"
config="$config_dir/identities.json"
umask 077
mkdir -p "$config_dir"
cat > "$config" <<JSON
{
  "identities": [
    {
      "name": "tapline-lake",
      "credentials": [{"accessKey": "$key", "secretKey": "$secret"}],
      "actions": ["Write:$bucket"]
    },
    {
      "name": "anonymous",
      "actions": ["Read:$bucket", "List:$bucket"]
    }
  ]
}
JSON
# The image's entrypoint drops from root to its own user before it runs weed.
if [ "$(id -u)" = 0 ] && id seaweed >/dev/null 2>&1; then
  chown -R seaweed:seaweed "$config_dir"
fi

exec /entrypoint.sh "$@" -s3.config="$config"
