#!/usr/bin/env bash
# Prints the tests that skipped during `make test` (recorded by fake_apiserver::tools in $1), or that none did.
log="${1:?usage: test-summary.sh SKIP_LOG}"
if [ -s "$log" ]; then
  echo "make test: $(wc -l < "$log") test(s) skipped:"
  sed 's/^/  /' "$log"
else
  echo "make test: 0 tests skipped"
fi
