#!/usr/bin/env bash
# What the browser tests need: Debian's chromium (apt, as root) and
# playwright-core (npm) in $BROWSER_DIR (default .stack/browser), driving
# that chromium (never a browser of its own: nothing is downloaded but the
# npm package). Idempotent; prints the directory holding node_modules.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DIR=${BROWSER_DIR:-$REPO/.stack/browser}
SPEC=${PLAYWRIGHT_SPEC:-playwright-core@1.64.1}
log() { printf '[browser] %s\n' "$*" >&2; }

missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if ((${#missing[@]})); then
  ((EUID == 0)) || { log "missing ${missing[*]}; as root: apt-get install ${missing[*]}"; exit 1; }
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt=(apt-get -y -q -o DPkg::Lock::Timeout=300 install --no-install-recommends "${missing[@]}")
  "${apt[@]}" >&2 || { apt-get -q update >&2 && "${apt[@]}" >&2; }
fi
mkdir -p "$DIR"
(
  flock 9
  if [[ $(cat "$DIR/.installed" 2>/dev/null) != "$SPEC" || ! -d $DIR/node_modules/playwright-core ]]; then
    log "npm install $SPEC into $DIR"
    npm install --prefix "$DIR" --no-audit --no-fund --loglevel=error "$SPEC" >&2
    echo "$SPEC" >"$DIR/.installed"
  fi
) 9>"$DIR.lock"
echo "$DIR"
