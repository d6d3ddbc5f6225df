#!/usr/bin/env bash
# Prints where the end-to-end tests ran (recorded by e2e_support in $2: "<where>\t<test>" per cluster a test
# started) and the tests that skipped during `make test` (recorded by e2e_support::tools in $1), or that
# none did.
log="${1:?usage: test-summary.sh SKIP_LOG [WHERE_LOG]}"
where="${2:-}"
if [ -n "$where" ] && [ -s "$where" ]; then
  echo "make test: end-to-end tests by the API server they ran on:"
  sort -u "$where" | cut -f1 | sort | uniq -c | sed 's/^ */  /'
fi
if [ -s "$log" ]; then
  echo "make test: $(wc -l < "$log") test(s) skipped:"
  sed 's/^/  /' "$log"
else
  echo "make test: 0 tests skipped"
fi
