# Sourced by scripts/test and scripts/run: cd to the repo root and make sure .venv holds the client distribution
# (client/, which the server depends on) and stocksync (editable, with the embedded servers and the test extras).
# pip runs only when either pyproject.toml changed since the last successful install, so repeated runs are fast
# while a fresh clone always installs.

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="$PWD/.venv"

python_3_11_or_newer() {
    local candidate
    for candidate in "${PYTHON:-}" python3 python3.13 python3.12 python3.11; do
        if [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1 \
            && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$candidate"
            return
        fi
    done
    echo "stocksync needs Python >= 3.11 (set PYTHON=/path/to/python3.11+)" >&2
    return 1
}

if [ ! -x "$VENV/bin/python" ]; then
    "$(python_3_11_or_newer)" -m venv "$VENV"
fi

stamp="$VENV/.stocksync-installed"
wanted="$("$VENV/bin/python" -c 'import hashlib; print(hashlib.sha256(b"".join(open(p, "rb").read() for p in ("client/pyproject.toml", "pyproject.toml"))).hexdigest())')"
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    echo "installing stocksync into .venv ..." >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e ./client
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[embedded,test]'
    echo "$wanted" >"$stamp"
fi
