#!/usr/bin/env bash
# Refresh the vendored React builds in static/vendor/ from the npm registry.
# The front end has no build step: it loads React's UMD files with <script> tags.
set -euo pipefail
cd "$(dirname "$0")"
VERSION=18.3.1  # the last React with UMD builds
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(
    cd "$work"
    npm pack --silent "react@$VERSION" "react-dom@$VERSION" >/dev/null
    mkdir react react-dom
    tar xzf "react-$VERSION.tgz" -C react --strip-components 1
    tar xzf "react-dom-$VERSION.tgz" -C react-dom --strip-components 1
)
cp "$work/react/umd/react.production.min.js" static/vendor/
cp "$work/react-dom/umd/react-dom.production.min.js" static/vendor/
cp "$work/react/LICENSE" static/vendor/LICENSE-react
echo "React $VERSION copied to static/vendor/"
