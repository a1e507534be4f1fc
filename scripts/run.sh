#!/usr/bin/env bash
# Sets up, builds and generates text with the default model (../shared/models/stories260K.gguf,
# or -m PATH / KVSERVE_MODEL=PATH). Extra arguments go to `kvserve run`.
# Usage: scripts/run.sh [-m MODEL] [-p PROMPT] [-n N] [--temp T] ...
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec "${KVSERVE_BUILD_DIR:-build}/kvserve" run "$@"
