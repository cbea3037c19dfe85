# Sourced by scripts/demo and scripts/test: create (once) and update the repo's .venv from constraints.txt.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"
if [ ! -x "$VENV/bin/python" ]; then
  echo "creating $VENV" >&2
  "${PYTHON:-python3}" -m venv "$VENV"
fi
# Reinstall only when the dependency declarations change.
STAMP="$VENV/.edge-toolkit-installed"
WANT=$(cat "$ROOT/pyproject.toml" "$ROOT/constraints.txt" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ]; then
  echo "installing edge-toolkit[convert,test] with constraints.txt into $VENV (first run: a few minutes)" >&2
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -c "$ROOT/constraints.txt" -e "$ROOT[convert,test]"
  echo "$WANT" >"$STAMP"
fi
export PATH="$VENV/bin:$PATH"
export HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
cd "$ROOT"
