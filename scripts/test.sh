#!/usr/bin/env bash
# The one command that runs Bulwark's whole test suite on a fresh Debian machine with Rust:
# installs what the tests need when it is missing, then builds and runs every test (unit tests,
# integration tests with real `bulwark` processes, doc tests). Exits non-zero on any failure.
# CI (.ci/run) runs exactly this.
#
# Needs: etcdctl 3.4 (Debian's `etcd-client` package) to drive members the way operators do,
# protoc (`protobuf-compiler`) for the build script of the `etcd-client` test crate, and etcd
# itself (`etcd-server`) for the `bulwark bench` smoke test.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf '==> %s\n' "$*" >&2; }

missing=()
command -v etcdctl >/dev/null 2>&1 || missing+=(etcd-client)
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
if ((${#missing[@]} > 0)); then
  if [[ $(id -u) -eq 0 ]]; then
    sudo=()
  else
    sudo=(sudo)
  fi
  log "installing ${missing[*]} with apt-get"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

log "$(ETCDCTL_API=3 etcdctl version | head -n 1); $(protoc --version); $(cargo --version)"

export RUST_BACKTRACE=1

# Every test binary runs even when an earlier one fails, and the doc tests run too, so one run
# reports every failure; the exit code is non-zero if anything failed.
status=0
log "cargo test --all-targets"
cargo test --all-targets --no-fail-fast || status=1

log "cargo test --doc"
cargo test --doc || status=1

if ((status == 0)); then
  log "all tests passed"
else
  log "some tests FAILED (see above)"
fi
exit "$status"
