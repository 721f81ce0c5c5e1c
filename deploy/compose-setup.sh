#!/bin/sh
# One-shot setup of deploy/compose.yaml's cluster, run by its `setup` service once strata-1 is
# up: puts strata-2 and strata-3 in the layout (zones zone-2, zone-3; 3 copies per chunk,
# uploads wait for 2), creates the tenant "demo" with the bucket "demo", and saves the
# tenant's token in the "ca" volume (/ca/tenant.token). Does nothing when that file exists.
set -eu
export STRATA_ENDPOINT=https://strata-1:7400 STRATA_CA_FILE=/ca/ca.crt
export STRATA_ADMIN_TOKEN_FILE=/strata-1/admin.token
[ -s /ca/tenant.token ] && { echo "setup: already done (/ca/tenant.token exists)"; exit 0; }

# Bounded waits: 120 tries, one second apart.
retry() {
    what=$1; shift
    i=0
    until "$@" >/tmp/out 2>&1; do
        i=$((i + 1))
        [ "$i" -lt 120 ] || { cat /tmp/out >&2; echo "setup: $what: gave up after 120 s" >&2; exit 1; }
        sleep 1
    done
}
retry "strata-1 answering" sh -c '[ -s /strata-1/admin.token ] && strata status'
for n in 2 3; do
    # A node can be assigned once it has joined (it is then a Raft member).
    retry "strata-$n joined" sh -c "strata layout show | grep -q strata-$n"
    retry "assign strata-$n" strata layout assign "https://strata-$n:7400" --zone "zone-$n"
done
retry "replication 3/2" strata layout replication 3 --write-quorum 2
version=$(strata layout show | sed -n 's/^STAGED layout v\([0-9]*\).*/\1/p')
[ -n "$version" ] || { strata layout show >&2; echo "setup: no staged layout" >&2; exit 1; }
retry "apply layout v$version" strata layout apply "$version"
token=$(strata tenant create demo | sed -n 's/^token: \([^ ]*\).*/\1/p')
[ -n "$token" ] || { echo "setup: tenant create printed no token" >&2; exit 1; }
retry "bucket demo" strata --token "$token" bucket create demo
umask 077
printf '%s\n' "$token" >/ca/tenant.token.new && mv /ca/tenant.token.new /ca/tenant.token
chown strata: /ca/tenant.token
strata layout show
echo "setup: done. Tenant token: docker compose -f deploy/compose.yaml exec strata-1 cat /ca/tenant.token"
