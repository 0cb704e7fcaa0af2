#!/usr/bin/env bash
# Make sure the system pieces the project needs are there; install Debian's packages when missing and
# running as root, otherwise say exactly what to install.
#   ensure-system.sh python   - python3 with the venv module
#   ensure-system.sh redis    - a redis-server binary (SYNDICATE_REDIS_SERVER overrides the name)
#   ensure-system.sh browser  - Debian's chromium at /usr/bin/chromium, for the dashboard's browser test
#   ensure-system.sh nginx    - Debian's nginx, the balancer of the load-balanced deployment test
set -euo pipefail

need_root() {
  echo "$1 is missing. Install it with: sudo apt-get install -y $2" >&2
  exit 1
}

apt_install() {
  if [ "$(id -u)" -ne 0 ]; then need_root "$1" "$2"; fi
  echo "Installing Debian package $2 ..." >&2
  apt-get update -qq >/dev/null
  # RUNLEVEL=1: invoke-rc.d then leaves a packaged service (nginx's on port 80) stopped.
  DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -qq "$2" >/dev/null
}

case "${1:-}" in
  python)
    py="${PYTHON:-python3}"
    command -v "$py" >/dev/null || need_root "$py" python3
    "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
      || { echo "Python 3.11 or newer is needed; $py is $("$py" --version 2>&1)" >&2; exit 1; }
    "$py" -c 'import venv, ensurepip' 2>/dev/null || apt_install "the Python venv module" python3-venv
    ;;
  redis)
    bin="${SYNDICATE_REDIS_SERVER:-redis-server}"
    command -v "$bin" >/dev/null || apt_install "redis-server" redis-server
    # Debian's package starts a service on port 6379; we never use it: the server runs its own.
    ;;
  browser)
    # Playwright (a test dependency) drives this binary; it never downloads a browser of its own.
    [ -x /usr/bin/chromium ] || apt_install "chromium (for the dashboard browser test)" chromium
    ;;
  nginx)
    # The tests run nginx as a foreground child with its own config and prefix; the service stays off.
    command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || apt_install "nginx (for the balancer test)" nginx
    ;;
  *)
    echo "usage: $0 python|redis|browser|nginx" >&2
    exit 2
    ;;
esac
