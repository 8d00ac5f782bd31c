#!/usr/bin/env bash
# Re-fetches the explorer's vendored chart library from npm at its pinned
# version, checks the tarball against the registry's integrity hash, and
# copies the files the page uses here. The build never runs this: the files
# are committed and compiled into the binary (src/explorer/mod.rs).
set -euo pipefail
cd "$(dirname "$0")"
VERSION=1.6.32
INTEGRITY=sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw==
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack "uplot@$VERSION" --silent >/dev/null)
got="sha512-$(openssl dgst -sha512 -binary "$tmp/uplot-$VERSION.tgz" | base64 -w0)"
[ "$got" = "$INTEGRITY" ] || { echo "uplot-$VERSION.tgz: integrity $got, expected $INTEGRITY" >&2; exit 1; }
tar xzf "$tmp/uplot-$VERSION.tgz" -C "$tmp"
cp "$tmp/package/dist/uPlot.iife.min.js" "$tmp/package/dist/uPlot.min.css" .
cp "$tmp/package/LICENSE" LICENSE-uPlot
echo "uPlot $VERSION copied into $(pwd)"
