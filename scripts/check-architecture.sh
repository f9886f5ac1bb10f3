#!/usr/bin/env bash
# The import contracts (import-linter: the layers, strategies free of the database and the latency layer, nothing
# imports the CLI) and the types (mypy) of the installed package. Both fail on any violation; CI runs this.
# The folders (nas/, latency/, kernels/, ...) become hwnas.* through package-dir, which neither tool follows, so a
# tree of links under build/ lays the package out as it is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${VENV:-.venv}/bin"
tree=build/hwnas-tree
rm -rf "$tree" && mkdir -p "$tree/hwnas"
for f in nas/*; do ln -s "$PWD/$f" "$tree/hwnas/"; done
for p in supernet latency kernels search_spaces; do ln -s "$PWD/$p" "$tree/hwnas/$p"; done
PYTHONPATH="$PWD/$tree" "$bin/lint-imports" pyproject.toml
cd "$tree" && "$OLDPWD/$bin/mypy" --config-file "$OLDPWD/pyproject.toml" --cache-dir "$OLDPWD/build/mypy-cache" -p hwnas
