#!/usr/bin/env bash
# Fetch the web console's front-end assets (xterm.js; Swagger UI for the API's docs page) from the npm registry (npm checks each package's integrity)
# into src/virtkit/daemon/static/vendor/, with their licences. Idempotent; `make test` runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=src/virtkit/daemon/static/vendor
want="@xterm/xterm@5.5.0 @xterm/addon-fit@0.10.0 swagger-ui-dist@5.17.14"
if [ -f "$dest/VERSIONS" ] && [ "$(cat "$dest/VERSIONS")" = "$want" ]; then exit 0; fi
if ! command -v npm >/dev/null; then
  echo "virtkit: npm is missing: the web console's assets (xterm.js) cannot be fetched (apt-get install npm)" >&2
  exit 1
fi
echo "virtkit: fetching the web console's assets from the npm registry: $want" >&2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent $want >/dev/null)
mkdir -p "$dest/xterm" "$dest/addon-fit"
tar -xzf "$tmp"/xterm-xterm-5.5.0.tgz -C "$tmp" package/lib/xterm.js package/css/xterm.css package/LICENSE
cp "$tmp/package/lib/xterm.js" "$tmp/package/css/xterm.css" "$tmp/package/LICENSE" "$dest/xterm/"
rm -rf "$tmp/package"
tar -xzf "$tmp"/xterm-addon-fit-0.10.0.tgz -C "$tmp" package/lib/addon-fit.js package/LICENSE
cp "$tmp/package/lib/addon-fit.js" "$tmp/package/LICENSE" "$dest/addon-fit/"
mkdir -p "$dest/swagger-ui"  # (the API's docs page at /docs)
tar -xzf "$tmp"/swagger-ui-dist-5.17.14.tgz -C "$tmp" package/swagger-ui-bundle.js package/swagger-ui.css \
    package/LICENSE package/NOTICE
cp "$tmp/package/swagger-ui-bundle.js" "$tmp/package/swagger-ui.css" "$tmp/package/LICENSE" \
   "$tmp/package/NOTICE" "$dest/swagger-ui/"
echo "$want" > "$dest/VERSIONS"
