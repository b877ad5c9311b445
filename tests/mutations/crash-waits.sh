#!/usr/bin/env bash
# Mutation check for tests/crash_semantics.rs: remove one wait at a time (the reply no longer
# waits for its commit) and show that the test covering it fails. Restores every file after
# each mutation. Usage: tests/mutations/crash-waits.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
run() { # file perl-substitution test-name
  local file="$1" subst="$2" test="$3"
  cp "$file" "$file.orig"
  perl -0pi -e "$subst" "$file"
  if cmp -s "$file" "$file.orig"; then
    echo "MUTATION DID NOT APPLY: $file $subst"; mv "$file.orig" "$file"; touch "$file"; return
  fi
  if cargo test --quiet --test crash_semantics "$test" >/dev/null 2>&1; then
    echo "SURVIVED (bad): $test with $file mutated"
  else
    echo "killed (good): $test fails when $(basename "$file") does not wait"
  fi
  mv "$file.orig" "$file"
  # The restored copy is older than the mutated build: make cargo rebuild from it.
  touch "$file"
}
r=src/protocol/resp/cmd
run $r/xread.rs 's/context\.pending\.add\(commit, context\.reply_index\);//' consumer_group_deliveries
run $r/xack.rs 's/context\.pending\.add\(commit, context\.reply_index\);//' claims_and_acknowledgements
run $r/xclaim.rs 's/context\.pending\.add\(commit, context\.reply_index\);//g' claims_and_acknowledgements
run $r/xgroup.rs 's/context\.pending\.add\(commit, context\.reply_index\);//g' group_and_consumer_changes
run $r/xdel.rs 's/context\.pending\.add\(commit, context\.reply_index\);//g' deletions_trims
run $r/xadd.rs 's/context\.pending\.add\(added\.commit, context\.reply_index\);//' appends_and_published
run $r/xtrim.rs 's/context\.pending\.add\(commit, context\.reply_index\);//' deletions_trims
run $r/keyspace.rs 's/context\.pending\.add\(commit, context\.reply_index\);//g' deletions_trims
run $r/pubsub.rs 's/context\.pending\.add\(commit, context\.reply_index\);//' appends_and_published
run src/protocol/amqp/channel.rs 's/\*self\.pending = \(\*self\.pending\)\.max\(commit\);//' amqp_removals
run src/protocol/amqp/channel.rs 's/commit = commit\.max\(self\.flush_acks\(\)\);//' amqp_declarations_and_transactions
run src/protocol/amqp/channel.rs 's/let ok = broker\.wait_async\(\*commit\)\.await\.is_ok\(\);/let ok = true;/' amqp_removals
