#!/usr/bin/env bash
# Print one node's NATS user for disrouter-auth.conf: its own identity, so it can write only its
# own registry card and read only its own node subject and inboxes.
#
#   k8s/nats/mint-node-user.sh NODE_ID MODEL_KEY [PREFIX]
#
# Paste the printed line into the `users: [...]` list of disrouter-auth.conf (one line per node)
# and give nats-server the environment variable it names (its password, e.g. "p$(openssl rand -hex 24)").
# Start the node with --node-id NODE_ID --nats-user node-NODE_ID and that password in
# DISROUTER_NATS_PASSWORD; its inboxes are then _INBOX.node-NODE_ID.>.
# NODE_ID and MODEL_KEY must be single subject tokens (letters, digits, '_' or '-').
set -euo pipefail
if [[ $# -lt 2 || $# -gt 3 ]]; then
  sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
node_id=$1 key=$2 prefix=${3:-disrouter}
for token in "$node_id" "$key"; do
  [[ $token =~ ^[A-Za-z0-9_-]+$ ]] || { echo "mint-node-user: '$token' is not a single subject token" >&2; exit 2; }
done
bucket="disrouter-nodes-${prefix//./_}"
var="DISROUTER_NODE_$(echo "$node_id" | tr 'a-z-' 'A-Z_')_PASSWORD"
user="node-$node_id"
cat <<CONF
    { user: "$user", password: \$$var, permissions: {
        publish: { allow: ["$prefix.model.*", "$prefix.node.*", "_INBOX.>", "\$KV.$bucket.$node_id",
                           "\$JS.API.INFO", "\$JS.API.STREAM.INFO.KV_$bucket", "\$JS.API.STREAM.CREATE.KV_$bucket",
                           "\$JS.API.CONSUMER.CREATE.KV_$bucket", "\$JS.API.CONSUMER.INFO.KV_$bucket.*",
                           "\$JS.API.CONSUMER.DELETE.KV_$bucket.*", "\$JS.FC.KV_$bucket.>"] }
        subscribe: { allow: ["$prefix.ingress", "$prefix.model.$key", "$prefix.node.$node_id", "_INBOX.$user.>"] } } }
CONF
